"""Processor-built video inputs for the engine tests (random frames, the chat template)."""
import torch


def video_inputs(processor, seed=0, frames=4, side=112, question="Which direction does the square move?"):
    video = torch.randint(0, 256, (frames, 3, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    msgs = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    return dict(processor(text=[text], videos=[video], return_tensors="pt", do_sample_frames=False))
