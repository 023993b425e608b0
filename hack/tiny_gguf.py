"""Write a tiny llama-architecture GGUF model with fixed random weights.

No model hub is reachable here, so the OpenAI-compatible server the chat agent
is tested against (llama.cpp's, see hack/openai-server.sh) serves this: a real
model file, real tokenizer and real inference, just meaningless. Greedy
decoding (temperature 0) makes its answers repeatable. One dimension of the
residual stream is a constant that only word tokens' output rows reward, so
the likeliest token is always a word, never a byte or end-of-sequence: the
answer is readable and a completion always runs to ``max_tokens``.

Run with the server's venv (it has ``gguf`` and numpy)::

    python hack/tiny_gguf.py OUT.gguf
"""

from __future__ import annotations

import sys

import gguf  # type: ignore[import-not-found,unused-ignore]
import numpy as np

SEED = 13
N_EMBD, N_HEAD, N_FF, N_LAYER, N_CTX = 64, 4, 128, 2, 512
WORDS = [
    *("hello", "world", "agent", "answer", "token", "model", "server", "chat", "echo"),
    *("reply", "yes", "no", "kube", "temporal", "pod", "node", "queue", "run", "done"),
    *("ok", "the", "a", "of", "to", "and", "is"),
]


def vocab() -> tuple[list[str], list[float], list[int]]:
    tokens = ["<unk>", "<s>", "</s>"]
    types = [
        gguf.TokenType.UNKNOWN,
        gguf.TokenType.CONTROL,
        gguf.TokenType.CONTROL,
    ]
    # Byte fallback: any text tokenizes, whatever the chat template adds.
    for b in range(256):
        tokens.append(f"<0x{b:02X}>")
        types.append(gguf.TokenType.BYTE)
    for word in WORDS:
        tokens.append("\u2581" + word)  # SentencePiece's word-start marker
        types.append(gguf.TokenType.NORMAL)
    scores = [0.0] * 3 + [-1000.0] * 256 + [-float(i) for i in range(len(WORDS))]
    return tokens, scores, [int(t) for t in types]


def main(path: str) -> None:
    rng = np.random.default_rng(SEED)
    tokens, scores, types = vocab()
    n_vocab = len(tokens)

    w = gguf.GGUFWriter(path, "llama")
    w.add_name("agentexec-tiny-random")
    w.add_context_length(N_CTX)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD)
    w.add_rope_dimension_count(N_EMBD // N_HEAD)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)

    def weight(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    words = 3 + 256  # the first word token
    embd = weight(n_vocab, N_EMBD)
    embd[:, 0] = 10.0  # the constant dimension; no layer writes to it
    w.add_tensor("token_embd.weight", embd)
    w.add_tensor("output_norm.weight", np.ones(N_EMBD, dtype=np.float32))
    out = weight(n_vocab, N_EMBD)
    out[:words, 0] = -5.0
    out[words:, 0] = 5.0
    w.add_tensor("output.weight", out)
    for i in range(N_LAYER):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v"):
            w.add_tensor(f"blk.{i}.{name}.weight", weight(N_EMBD, N_EMBD))
        attn_out = weight(N_EMBD, N_EMBD)
        attn_out[0, :] = 0.0  # (rows are output dimensions)
        w.add_tensor(f"blk.{i}.attn_output.weight", attn_out)
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", weight(N_FF, N_EMBD))
        w.add_tensor(f"blk.{i}.ffn_up.weight", weight(N_FF, N_EMBD))
        down = weight(N_EMBD, N_FF)
        down[0, :] = 0.0
        w.add_tensor(f"blk.{i}.ffn_down.weight", down)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main(sys.argv[1])
