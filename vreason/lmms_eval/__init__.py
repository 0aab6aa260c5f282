"""V-Reason as an lmms-eval model: `lmms-eval --model vreason --model_args pretrained=DIR,mode=switch,...`
(README, "lmms-eval").

lmms-eval is optional (`pip install -e ".[lmms]"`): nothing here is imported by `import vreason`,
and only `model.py` and `manifest.py` import lmms-eval, when lmms-eval itself loads them through
its `lmms_eval.models` entry point (pyproject.toml). One job per file:

- `manifest.py`: the entry point's payload, naming the chat class.
- `model.py`: `VReason`, lmms-eval's chat interface over `VReasonGenerator.generate_samples`.
- `settings.py`: model arguments and per-request generation kwargs to the project's configs.
- `requests.py`: a request's chat messages to the project's chat format and its media; batches.
- `stops.py`: lmms-eval's `until` stop strings on a finished generation.
- `traces.py`: what the model logs: per-sample traces and run-level V-Reason numbers.
"""
