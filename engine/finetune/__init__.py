"""Fine-tuning a pretrained decoder (SmolLM2-135M-Instruct): SFT and DPO, with LoRA adapters
through ``peft`` or all weights (see docs/engine.md, "Fine-tuning a pretrained model").

``config`` (no torch): ``FinetuneSpec`` and its validation; ``instructions``: the built-in
instruction set; ``lora``: adapters on the engine's ``Decoder`` (wrap, save, load, merge);
``data``: the examples in the model's own chat template; ``run``: ``finetune(spec, ...)``, the
loop with the training events; ``export``: a merged ``transformers`` directory or a PEFT
adapter directory. ``peft`` is imported by ``lora`` only, when a model is wrapped.
"""
