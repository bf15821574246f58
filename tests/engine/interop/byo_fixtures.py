"""Tiny random-weight transformers models saved as an upload would hold them (no download): a
config per family, a byte-level BPE tokenizer trained on a few sentences, ``save_pretrained`` into
a directory, zipped."""
import zipfile
from pathlib import Path

TEXT = ("The quick brown fox jumps over the lazy dog. In 1905, Einstein wrote four papers; "
        "def square(x): return x * x. Hello world, hello model! ") * 4
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_tokenizer(chat=False):
    import tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>",
                                                                              "<|im_end|>"],
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([TEXT], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>" if chat else "<|endoftext|>",
                                   bos_token="<|endoftext|>")
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_config(model_type, vocab_size):
    import transformers

    common = dict(vocab_size=vocab_size, tie_word_embeddings=False)
    if model_type == "gpt2":
        return transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=None,
                                        eos_token_id=None, **common)
    llama = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=64, **common)
    if model_type == "llama":
        return transformers.LlamaConfig(**llama)
    if model_type == "mistral":
        return transformers.MistralConfig(**llama, sliding_window=None)
    if model_type == "qwen2":
        return transformers.Qwen2Config(**llama)
    raise ValueError(model_type)


def tiny_model_dir(directory, model_type="llama", *, chat=False, seed=0):
    """A random-weight ``model_type`` model and its tokenizer, saved into ``directory``."""
    import torch
    import transformers

    tokenizer = tiny_tokenizer(chat)
    torch.manual_seed(seed)
    cfg = tiny_config(model_type, len(tokenizer))
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    directory = Path(directory)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def zip_dir(directory, zip_path, *, prefix="", extra=()):
    """Zip ``directory``'s files (under ``prefix``), plus ``extra`` (name, bytes) members."""
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(Path(directory).iterdir()):
            zf.write(f, prefix + f.name)
        for name, data in extra:
            zf.writestr(name, data)
    return Path(zip_path)
