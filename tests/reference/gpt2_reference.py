"""PyTorch reference ("twin") of frugal's C++ GPT-2 trainer.

Run it with the venv of scripts/setup.sh (.venv/bin/python: PyTorch 2.x + numpy; the
safetensors format is read and written here with struct + json + numpy).

Mode 1, parity (default) -- used by the C++ parity test:
  python3 gpt2_reference.py --weights W.safetensors --batches X.safetensors
      --out R.safetensors --lr F --min-lr F --warmup N --total-steps N
      --weight-decay F --beta1 F --beta2 F --eps F --clip F --threads N
  W: F32 parameters in the Hugging Face GPT-2 layout (see from_hf) + metadata
     n_layer, n_head, n_embd, vocab_size, context.  X: I32 "tokens" (S, B, T+1), S >= 10.
  With --autocast also "ac.logits", "ac.loss", "ac.grad.<name>": batch 0 under
  torch.autocast("cpu", bfloat16) (the loss in fp32 from the bf16 logits).
  R (F32): "logits" (B,T,V) and "loss" (1,) of batch 0 at the initial weights,
     "grad.<name>" for every parameter (batch 0, initial weights),
     "losses" (10,) and "grad_norms" (10,) of 10 AdamW steps on batches 0..9,
     "param5.<name>" for every parameter after 5 updates.
  The twin's parameter names (Linear weights stored [out, in]), also used for
  "grad.<name>" and "param5.<name>": wte (Vp,C), wpe (maxT,C),
  blocks.<l>.{ln1,ln2}.{weight,bias}, blocks.<l>.attn.{qkv,proj}.{weight,bias},
  blocks.<l>.mlp.{fc,proj}.{weight,bias}, ln_f.{weight,bias}.

Mode 3, attention alone -- used by the attention test:
  python3 gpt2_reference.py --attention A.safetensors --out R.safetensors
  A: F32 "qkv" (B,T,3C), "dout" (B,T,C), metadata n_head. R: "out" (B,T,C), "dqkv".

Mode 2, bench -- used by the benchmark:
  python3 gpt2_reference.py --bench --n-layer 12 --n-head 12 --n-embd 768
      --vocab 50257 --context 1024 --batch 4 --seq 256 --steps 6
      --warmup-steps 2 --threads 2 [--dtype bf16]
  Prints one JSON line: tokens_per_s, step_s_median, peak_rss_mib, threads, loss.
  --sdpa [--compile] is the usual fast PyTorch recipe (scaled_dot_product_attention, fused
  AdamW, torch.compile), on the CPU (bench/train_bench.py) and on a GPU (bench/gpu/check.sh:
  --device cuda, where the JSON line also holds peak_gpu_mib, torch.cuda.max_memory_allocated).
"""
import argparse
import json
import math
import os
import resource
import statistics
import struct
import sys
import time

import numpy as np

# ---------------------------------------------------------------- safetensors

DTYPES = {"F32": np.float32, "I32": np.int32}
DTYPE_NAMES = {np.dtype(np.float32): "F32", np.dtype(np.int32): "I32"}


def read_safetensors(path):
    """Returns ({name: np.ndarray}, metadata dict)."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", {}) or {}
    base = 8 + n
    tensors = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        dt = np.dtype(DTYPES[info["dtype"]]).newbyteorder("<")
        arr = np.frombuffer(data, dtype=dt, count=(end - begin) // dt.itemsize,
                            offset=base + begin)
        tensors[name] = arr.reshape(info["shape"]).astype(dt.newbyteorder("="))
    return tensors, meta


def write_safetensors(path, tensors, meta=None):
    """Writes {name: np.ndarray} atomically (tmp file, fsync, rename)."""
    header, blobs, offset = {}, [], 0
    if meta:
        header["__metadata__"] = {str(k): str(v) for k, v in meta.items()}
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        blob = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": DTYPE_NAMES[arr.dtype], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    hbytes = json.dumps(header).encode("utf-8")
    hbytes += b" " * (-len(hbytes) % 8)  # pad so the data is 8-byte aligned
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hbytes)))
        f.write(hbytes)
        for blob in blobs:
            f.write(blob)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ---------------------------------------------------------------- Hugging Face layout

# (twin name, GPT2LMHeadModel name, Conv1D: stored [in, out] there)
HF_BLOCK = [("ln1.weight", "ln_1.weight", False), ("ln1.bias", "ln_1.bias", False),
            ("attn.qkv.weight", "attn.c_attn.weight", True), ("attn.qkv.bias", "attn.c_attn.bias", False),
            ("attn.proj.weight", "attn.c_proj.weight", True), ("attn.proj.bias", "attn.c_proj.bias", False),
            ("ln2.weight", "ln_2.weight", False), ("ln2.bias", "ln_2.bias", False),
            ("mlp.fc.weight", "mlp.c_fc.weight", True), ("mlp.fc.bias", "mlp.c_fc.bias", False),
            ("mlp.proj.weight", "mlp.c_proj.weight", True), ("mlp.proj.bias", "mlp.c_proj.bias", False)]


def from_hf(weights, n_layer, vocab_size):
    """GPT2LMHeadModel tensors (transformer.*; Conv1D [in, out]; wte with V rows; lm_head tied,
    absent) -> the twin's names, Linear [out, in], wte padded with zero rows to Vp."""
    def get(name):
        return weights["transformer." + name]
    Vp = ((vocab_size + 127) // 128) * 128
    wte = get("wte.weight")
    if wte.shape[0] != vocab_size:
        sys.exit("wte has %d rows, expected vocab_size %d" % (wte.shape[0], vocab_size))
    if "lm_head.weight" in weights:
        sys.exit("lm_head.weight is stored: the head must be tied to wte")
    out = {"wte": np.concatenate([wte, np.zeros((Vp - vocab_size, wte.shape[1]), np.float32)]),
           "wpe": get("wpe.weight"), "ln_f.weight": get("ln_f.weight"), "ln_f.bias": get("ln_f.bias")}
    for l in range(n_layer):
        for ours, hf, conv1d in HF_BLOCK:
            t = get("h.%d.%s" % (l, hf))
            out["blocks.%d.%s" % (l, ours)] = t.T.copy() if conv1d else t
    return out


def load_weights(model, weights):
    params = dict(model.named_parameters())
    missing = set(params) - set(weights)
    if missing:
        sys.exit("weights file lacks: %s" % sorted(missing))
    import torch
    with torch.no_grad():
        for name, p in params.items():
            if tuple(weights[name].shape) != tuple(p.shape):
                sys.exit("%s: shape %s, expected %s" % (name, weights[name].shape, tuple(p.shape)))
            p.copy_(torch.from_numpy(weights[name]))
    return params


# ---------------------------------------------------------------- model

def build_model(torch, n_layer, n_head, n_embd, vocab_size, context, sdpa=False):
    nn, F = torch.nn, torch.nn.functional
    C, Vp = n_embd, ((vocab_size + 127) // 128) * 128

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(C, 3 * C)
            self.proj = nn.Linear(C, C)

        def forward(self, x):
            B, T, _ = x.shape
            hs = C // n_head
            q, k, v = self.qkv(x).split(C, dim=2)
            q, k, v = (t.view(B, T, n_head, hs).transpose(1, 2) for t in (q, k, v))
            if sdpa:  # flash attention on a GPU
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                return self.proj(y.transpose(1, 2).contiguous().view(B, T, C))
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))
            mask = torch.ones(T, T, dtype=torch.bool).tril()
            att = F.softmax(att.masked_fill(~mask, float("-inf")), dim=-1)
            y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
            return self.proj(y)

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(C, 4 * C)
            self.proj = nn.Linear(4 * C, C)

        def forward(self, x):
            return self.proj(F.gelu(self.fc(x), approximate="tanh"))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1 = nn.LayerNorm(C, eps=1e-5)
            self.attn = Attention()
            self.ln2 = nn.LayerNorm(C, eps=1e-5)
            self.mlp = MLP()

        def forward(self, x):
            x = x + self.attn(self.ln1(x))
            return x + self.mlp(self.ln2(x))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Parameter(torch.zeros(Vp, C))
            self.wpe = nn.Parameter(torch.zeros(context, C))
            self.blocks = nn.ModuleList([Block() for _ in range(n_layer)])
            self.ln_f = nn.LayerNorm(C, eps=1e-5)
            self.checkpoint = False  # torch.utils.checkpoint per block (bench --checkpoint)

        def forward(self, idx, targets):
            T = idx.shape[1]
            x = self.wte[idx] + self.wpe[:T]
            for block in self.blocks:
                if self.checkpoint:
                    x = torch.utils.checkpoint.checkpoint(block, x, preserve_rng_state=False)
                else:
                    x = block(x)
            logits = self.ln_f(x) @ self.wte[:vocab_size].t()
            loss = F.cross_entropy(logits.reshape(-1, vocab_size), targets.reshape(-1))
            return logits, loss

    return GPT()


def gpt2_init(torch, model, n_layer):
    """GPT-2 init: N(0, 0.02), residual projections 0.02/sqrt(2L), LN 1/0, biases 0."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.fill_(1.0 if name.endswith("ln1.weight") or name.endswith("ln2.weight")
                        or name == "ln_f.weight" else 0.0)
            elif name.endswith("attn.proj.weight") or name.endswith("mlp.proj.weight"):
                p.normal_(0.0, 0.02 / math.sqrt(2 * n_layer))
            else:
                p.normal_(0.0, 0.02)


def make_optimizer(torch, model, lr, weight_decay, betas, eps, fused=False):
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused)


def lr_at(i, lr, min_lr, warmup, total_steps):
    if i < warmup:
        return lr * (i + 1) / warmup
    p = (i - warmup) / max(1, total_steps - warmup)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * p))


# ---------------------------------------------------------------- modes

def run_parity(torch, a):
    weights, meta = read_safetensors(a.weights)
    cfg = {k: int(meta[k]) for k in ("n_layer", "n_head", "n_embd", "vocab_size", "context")}
    model = build_model(torch, **cfg)
    params = load_weights(model, from_hf(weights, cfg["n_layer"], cfg["vocab_size"]))

    tokens = torch.from_numpy(read_safetensors(a.batches)[0]["tokens"]).long()
    if tokens.shape[0] < 10:
        sys.exit("need at least 10 batches, got %d" % tokens.shape[0])

    def batch(s):
        return tokens[s, :, :-1], tokens[s, :, 1:]

    out = {}
    logits, loss = model(*batch(0))
    loss.backward()
    out["logits"] = logits.detach().numpy()
    out["loss"] = np.array([loss.item()], dtype=np.float32)
    for name, p in params.items():
        out["grad." + name] = p.grad.numpy().copy()
    if a.autocast:
        # the same batch under bf16 autocast (fp32 master weights): "ac.*"
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits, _ = model(*batch(0))
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, cfg["vocab_size"]),
                                                 batch(0)[1].reshape(-1))
        loss.backward()
        out["ac.logits"] = logits.detach().float().numpy()
        out["ac.loss"] = np.array([loss.item()], dtype=np.float32)
        for name, p in params.items():
            out["ac.grad." + name] = p.grad.float().numpy().copy()

    opt = make_optimizer(torch, model, a.lr, a.weight_decay, (a.beta1, a.beta2), a.eps)
    losses, norms = [], []
    for i in range(10):
        opt.zero_grad(set_to_none=False)
        _, loss = model(*batch(i))
        loss.backward()
        losses.append(loss.item())
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip)))
        for g in opt.param_groups:
            g["lr"] = lr_at(i, a.lr, a.min_lr, a.warmup, a.total_steps)
        opt.step()
        if i == 4:
            for name, p in params.items():
                out["param5." + name] = p.detach().numpy().copy()
    out["losses"] = np.array(losses, dtype=np.float32)
    out["grad_norms"] = np.array(norms, dtype=np.float32)
    write_safetensors(a.out, {k: v.astype(np.float32) for k, v in out.items()})


def run_attention(torch, a):
    """Causal attention alone: out and d(sum(dout * out))/dqkv for qkv (B,T,3C), dout (B,T,C)."""
    t, meta = read_safetensors(a.attention)
    n_head = int(meta["n_head"])
    qkv = torch.from_numpy(t["qkv"]).requires_grad_(True)
    B, T, C3 = qkv.shape
    C, hs = C3 // 3, C3 // 3 // n_head
    q, k, v = (x.view(B, T, n_head, hs).transpose(1, 2) for x in qkv.split(C, dim=2))
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))
    att = att.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf")).softmax(-1)
    out = (att @ v).transpose(1, 2).reshape(B, T, C)
    (out * torch.from_numpy(t["dout"])).sum().backward()
    write_safetensors(a.out, {"out": out.detach().numpy(), "dqkv": qkv.grad.numpy()})


def run_bench(torch, a):
    torch.manual_seed(0)
    gpu = a.device == "cuda"
    model = build_model(torch, a.n_layer, a.n_head, a.n_embd, a.vocab, a.context, a.sdpa).to(a.device)
    gpt2_init(torch, model, a.n_layer)
    model.checkpoint = a.checkpoint
    opt = make_optimizer(torch, model, 3e-4, 0.1, (0.9, 0.95), 1e-8, fused=gpu or a.sdpa)
    step_model = torch.compile(model) if a.compile else model
    times, loss = [], None
    for i in range(a.warmup_steps + a.steps):
        tok = torch.randint(0, a.vocab, (a.batch, a.seq + 1), device=a.device)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        # bf16: autocast runs the cross-entropy in fp32 from the bf16 logits (nanoGPT's recipe)
        with torch.autocast(a.device, dtype=torch.bfloat16, enabled=a.dtype == "bf16"):
            _, loss = step_model(tok[:, :-1], tok[:, 1:])
        loss.backward()
        if a.clip > 0:  # frugal clips the global norm by default (train.grad_clip = 1): the same work
            torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip)
        opt.step()
        if gpu:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        if i >= a.warmup_steps:
            times.append(dt)
    med = statistics.median(times)
    print(json.dumps({
        "tokens_per_s": a.batch * a.seq / med,
        "step_s_median": med,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": a.threads,
        "loss": loss.item(),
        **({"peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20} if gpu else {}),
    }))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    # parity mode
    ap.add_argument("--weights")
    ap.add_argument("--batches")
    ap.add_argument("--out")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--min-lr", type=float, default=0.0)
    ap.add_argument("--warmup", type=int, default=0)
    ap.add_argument("--total-steps", type=int, default=10)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--beta1", type=float, default=0.9)
    ap.add_argument("--beta2", type=float, default=0.95)
    ap.add_argument("--eps", type=float, default=1e-8)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--autocast", action="store_true",
                    help="parity: also write ac.logits, ac.loss, ac.grad.* of batch 0 under bf16 autocast")
    # bench mode
    ap.add_argument("--bench", action="store_true")
    ap.add_argument("--attention", help="attention mode: a safetensors file with qkv, dout (+ metadata n_head)")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                    help="bench: bf16 runs the forward under torch.autocast (fp32 master weights)")
    ap.add_argument("--checkpoint", action="store_true", help="bench: torch.utils.checkpoint per block")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="bench: where to train")
    ap.add_argument("--sdpa", action="store_true", help="bench: scaled_dot_product_attention (flash)")
    ap.add_argument("--compile", action="store_true", help="bench: torch.compile the model")
    ap.add_argument("--n-layer", type=int, default=12)
    ap.add_argument("--n-head", type=int, default=12)
    ap.add_argument("--n-embd", type=int, default=768)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup-steps", type=int, default=2)
    a = ap.parse_args()
    if not a.bench and not a.attention and not (a.weights and a.batches and a.out):
        ap.error("parity mode needs --weights, --batches and --out")

    os.environ["OMP_NUM_THREADS"] = str(a.threads)
    os.environ["OPENBLAS_NUM_THREADS"] = str(a.threads)
    import torch  # after the env vars, so the thread pools honour them
    import torch.utils.checkpoint  # noqa: F401  (bench --checkpoint)
    torch.set_num_threads(a.threads)
    (run_bench if a.bench else run_attention if a.attention else run_parity)(torch, a)


if __name__ == "__main__":
    main()
