# Decode speed of Hugging Face transformers (eager attention, batch 1, greedy) on any causal LM checkpoint,
# the peer of `worker-controller generate --json`'s decode_tokens_per_s. Prints one JSON line.
import argparse, json, statistics, time
import torch
from transformers import AutoModelForCausalLM

p = argparse.ArgumentParser()
p.add_argument("--model", required=True)
p.add_argument("--device", default="cuda:0")
p.add_argument("--dtype", default="f16")
p.add_argument("--new-tokens", type=int, default=256)
p.add_argument("--repeats", type=int, default=5)
a = p.parse_args()
dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[a.dtype]
dev = torch.device(a.device)
model = AutoModelForCausalLM.from_pretrained(a.model, dtype=dtype, attn_implementation="eager").to(dev).eval()
prompt = torch.tensor([[2]], device=dev)


def timed(n):
    torch.cuda.synchronize(dev) if dev.type == "cuda" else None
    t = time.perf_counter()
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=1)
    torch.cuda.synchronize(dev) if dev.type == "cuda" else None
    assert out.shape[1] == n + 1
    return time.perf_counter() - t


timed(8)  # warm-up: kernels, allocator
rates = []
for _ in range(a.repeats):
    one = timed(1)
    full = timed(a.new_tokens)
    rates.append((a.new_tokens - 1) / (full - one))
print(json.dumps({"peer": "transformers generate (eager)", "torch": torch.__version__,
                  "decode_tokens_per_s": rates, "p50": statistics.median(rates)}))
