"""benchmarks/gpu_check.py on a machine without a CUDA device, and without Ray, FAISS and vLLM."""
import os
import subprocess
import sys

from tests.conftest import REPO

# The check as a GPU box with only torch, transformers and peft would run it: those three cannot be imported.
WITHOUT_RAY_FAISS_VLLM = """
import argparse, runpy, sys
from importlib.abc import MetaPathFinder

class Missing(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {"ray", "faiss", "vllm"}:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, Missing())
check = runpy.run_path("benchmarks/gpu_check.py")
rc = check["main"]([])
for name, part in check["PARTS"]:
    if name in ("embed vllm", "faiss gpu index"):
        assert check["run_part"](name, part, argparse.Namespace())
print("ray imported" if "ray" in sys.modules else "no ray")
sys.exit(rc)
"""


def test_without_a_device_it_says_so_and_exits_0_and_missing_modules_are_skips():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, "-c", WITHOUT_RAY_FAISS_VLLM], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["no CUDA device: nothing to check (the GPU parts need one)",
                                       "embed vllm: skipped: vllm not installed",
                                       "faiss gpu index: skipped: faiss not installed",
                                       "no ray"]


def test_the_script_runs_as_documented_on_this_machine():
    out = subprocess.run([sys.executable, "benchmarks/gpu_check.py"], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, timeout=300)
    assert out.returncode == 0 and "no CUDA device" in out.stdout, out.stderr
