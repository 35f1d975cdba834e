# Decode speed of Hugging Face transformers at its fastest on one GPU: a static KV cache and
# `torch.compile` (CUDA graphs via mode="reduce-overhead"), greedy, fixed prompt and output lengths,
# at each batch size asked for. The peer that issue 23's targets name. Prints one JSON line per batch:
# {"batch", "new_tokens", "prompt_tokens", "seconds" (list, one per repeat), "output_tokens_per_s" (median)}.
import argparse, json, statistics, time
import torch
from transformers import AutoModelForCausalLM

p = argparse.ArgumentParser()
p.add_argument("--model", required=True)
p.add_argument("--device", default="cuda:0")
p.add_argument("--dtype", default="bf16")
p.add_argument("--batches", default="1,64")
p.add_argument("--prompt-tokens", type=int, default=32)
p.add_argument("--new-tokens", type=int, default=128)
p.add_argument("--repeats", type=int, default=3)
a = p.parse_args()
dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[a.dtype]
dev = torch.device(a.device)
model = AutoModelForCausalLM.from_pretrained(a.model, dtype=dtype).to(dev).eval()
# A static cache makes `generate` compile the decode step itself (CUDA graphs, "reduce-overhead"),
# as transformers documents; compiling `forward` by hand as well breaks its graph replay.
model.generation_config.cache_implementation = "static"
try:
    from transformers import CompileConfig
    model.generation_config.compile_config = CompileConfig(fullgraph=True, mode="reduce-overhead")
except ImportError:
    pass
vocab = model.config.vocab_size


def run(batch):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, min(vocab, 30000), (batch, a.prompt_tokens), generator=g).to(dev)
    torch.cuda.synchronize(dev)
    t = time.perf_counter()
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=a.new_tokens,
                             min_new_tokens=a.new_tokens, do_sample=False, pad_token_id=0)
    torch.cuda.synchronize(dev)
    assert out.shape == (batch, a.prompt_tokens + a.new_tokens), out.shape
    return time.perf_counter() - t


for batch in [int(b) for b in a.batches.split(",")]:
    try:
        compile_s = run(batch)  # compiles and captures this shape
    except Exception as e:  # report and go on with the next batch size
        print(json.dumps({"batch": batch, "error": str(e)[-400:]}), flush=True)
        continue
    warm = [run(batch) for _ in range(1)]
    seconds = [run(batch) for _ in range(a.repeats)]
    print(json.dumps({
        "batch": batch, "new_tokens": a.new_tokens, "prompt_tokens": a.prompt_tokens,
        "first_run_s": round(compile_s, 3), "seconds": [round(s, 4) for s in seconds],
        "output_tokens_per_s": round(batch * a.new_tokens / statistics.median(seconds), 1),
        "dtype": a.dtype, "device": torch.cuda.get_device_name(dev),
        "torch": torch.__version__,
    }), flush=True)
