"""Probe: import vllm, build perpo's tiny LLaVA, run vllm.LLM.generate on one image prompt."""
import os, sys, time, tempfile, traceback
t0 = time.time()
import torch
print("torch", torch.__version__, flush=True)
try:
    import torchvision
    print("torchvision", torchvision.__version__, "import ok", flush=True)
except Exception as e:
    print("torchvision import FAILED:", type(e).__name__, str(e)[:300], flush=True)
import vllm
print("vllm", vllm.__version__, "imported in %.1fs" % (time.time() - t0), flush=True)
from vllm import LLM, SamplingParams
from perpo.models.tiny import save_tiny
from PIL import Image
d = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp()
save_tiny(d)
print("tiny saved", d, flush=True)
if os.environ.get("PROBE_REMAP"):  # vLLM 0.32 expects vision_tower.vision_model.* (transformers 5.19 saves vision_tower.*)
    import shutil; shutil.copytree(d, d + "_tf", dirs_exist_ok=True)
    from safetensors.torch import load_file, save_file
    sd = load_file(f"{d}/model.safetensors")
    sd = {("vision_tower.vision_model." + k[len("vision_tower."):] if k.startswith("vision_tower.") else k): v for k, v in sd.items()}
    save_file(sd, f"{d}/model.safetensors", metadata={"format": "pt"})
    print("remapped vision_tower.* -> vision_tower.vision_model.*", flush=True)
dtype = os.environ.get("PROBE_DTYPE", "float32")
t = time.time()
llm = LLM(model=d, dtype=dtype, enforce_eager=True, max_model_len=512)
print("LLM up in %.1fs" % (time.time() - t), flush=True)
from transformers import AutoProcessor
proc = AutoProcessor.from_pretrained(d)
print("image tokens per prompt:", proc(images=[Image.new("RGB", (64, 64))], text=["<image>"], return_tensors="pt")["input_ids"].shape, flush=True)
msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "where is the box?"}]}]
prompt = proc.apply_chat_template(msgs, add_generation_prompt=True)
print("prompt", repr(prompt), flush=True)
img = Image.new("RGB", (64, 64), (200, 10, 10))
sp = SamplingParams(n=4, temperature=1.0, top_p=1.0, max_tokens=16, seed=1, stop_token_ids=[proc.tokenizer.eos_token_id], logprobs=0)
out = llm.generate([{"prompt": prompt, "multi_modal_data": {"image": img}}], [sp], use_tqdm=False)
for c in out[0].outputs:
    print(c.finish_reason, list(c.token_ids), repr(c.text), "vllm cumulative_logprob", c.cumulative_logprob)
from transformers import LlavaForConditionalGeneration
from perpo.listbatch.naive import encode_prefixes
from perpo.listbatch.packed import build_batch, batch_logps
model = LlavaForConditionalGeneration.from_pretrained(d + "_tf" if os.environ.get("PROBE_REMAP") else d).eval()
pre = encode_prefixes(proc, [prompt], [img])
img_id = proc.tokenizer.convert_tokens_to_ids("<image>"); print("image token id", img_id, flush=True)
outs = [c for c in out[0].outputs if img_id not in c.token_ids]; print("answers without the image token:", len(outs), flush=True)
answers = [[list(c.token_ids) for c in outs]]
with torch.no_grad():
    lp = batch_logps(model, build_batch(pre, answers, proc.tokenizer.pad_token_id, layout="naive"))
for c, s in zip(outs, lp.sum[0].tolist()):
    print("logp vllm %.5f transformers %.5f diff %.2e" % (c.cumulative_logprob, s, abs(c.cumulative_logprob - s)))
print("total %.1fs" % (time.time() - t0))
