# The Python peer of `worker-controller bench`: a fresh process that loads an OPT checkpoint with
# Hugging Face transformers, moves it to the device and makes one token, reporting the same anchors
# on CLOCK_MONOTONIC (shared with the Rust parent) as one JSON line on stdout.
import time

T0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)

import argparse, glob, json, os  # noqa: E402


def now():
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


p = argparse.ArgumentParser()
p.add_argument("--model", required=True)
p.add_argument("--device", default="cpu")
p.add_argument("--dtype", default="f32")
a = p.parse_args()

import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[a.dtype]
dev = torch.device(a.device)


def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


marks = {"process_started": T0}
torch.zeros(1, device=dev)
sync()
marks["device_ready"] = now()
model = AutoModelForCausalLM.from_pretrained(a.model, dtype=dtype, attn_implementation="eager")
marks["weights_read"] = now()
model = model.to(dev).eval()
sync()
marks["weights_on_device"] = now()
marks["engine_ready"] = now()
with torch.no_grad():
    logits = model(torch.tensor([[2]], device=dev)).logits
    token = int(logits[0, -1].argmax())
sync()
marks["first_token"] = now()
size = sum(os.path.getsize(f) for f in glob.glob(os.path.join(a.model, "*.safetensors")))
print(json.dumps({"marks": marks, "bytes": size, "token": token}))
