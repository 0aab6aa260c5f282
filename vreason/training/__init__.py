"""Training the tiny Qwen2.5-VL that ships with the package (`vreason train-tiny`)."""
