"""Tiny random-weight Llama model directories, made locally (no model hub).

A directory holds a Llama ``config.json`` and a byte-level BPE tokenizer trained with
`tokenizers` on a small built-in corpus (saved through transformers'
``PreTrainedTokenizerFast`` so vLLM and HF load it like a hub tokenizer, chat template
included). Engines load it with ``load_format="dummy"`` (random weights): the output text is
gibberish, but the engine does the real work — tokenization, prefill, decode, KV cache,
continuous batching — at the tiny model's cost. Tests, the engine profiler and dry runs use
these as stand-ins for real checkpoints.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["make_tiny_llama"]

_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many "
    "clips in May. How many clips did Natalia sell altogether in April and May?",
    "Write a short poem about the sea, the wind and the long road home.",
    "Explain the difference between tensor parallelism and pipeline parallelism.",
    "A router sends easy queries to the small model and hard ones to the large model.",
    "0 1 2 3 4 5 6 7 8 9 + - * / = ( ) [ ] { } < > , . ; : ! ? ' \" # $ % & @",
]


def make_tiny_llama(path: str | Path, *, hidden_size: int = 128, layers: int = 2,
                    heads: int = 4, kv_heads: int = 2, vocab_size: int = 4096,
                    max_position: int = 2048, seed: int = 0) -> Path:
    """Write a tiny Llama model directory at `path` (created; files overwritten).

    Args:
        path: the directory.
        hidden_size: the model width; the MLP is ``4 * hidden_size`` wide.
        layers: decoder layers.
        heads: attention heads (``hidden_size % heads == 0``).
        kv_heads: KV heads of grouped-query attention (``heads % kv_heads == 0``).
        vocab_size: the BPE vocabulary size the tokenizer is trained to (an upper bound: the
            small corpus yields fewer merges; the config's ``vocab_size`` is the tokenizer's).
        max_position: the context length (``max_position_embeddings``).
        seed: makes two directories with different seeds distinct models (the config's
            ``boute_seed`` field); the tokenizer is identical.

    Returns:
        The directory path.

    Raises:
        ValueError: on an inconsistent architecture.

    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if hidden_size % heads or heads % kv_heads:
        raise ValueError(f"hidden_size={hidden_size} must divide by heads={heads} and heads "
                         f"by kv_heads={kv_heads}")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    specials = ["<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
        model_max_length=max_position)
    fast.chat_template = _CHAT_TEMPLATE
    fast.save_pretrained(str(out))
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": hidden_size, "intermediate_size": 4 * hidden_size,
        "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv_heads, "vocab_size": len(fast),
        "max_position_embeddings": max_position, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": False,
        "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16",
        "boute_seed": seed,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out
