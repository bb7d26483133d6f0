"""Peak memory of evaluating an ImageNet-1k-sized set with the imagenet1k protocol (issue 21): a synthetic 1,000-class
IPC 50 set at 224 px held as dsco evaluate holds it (uint8, the PNG bytes, converted per batch), trained for a few
steps of the protocol (ResNet-18, batch 200, a ResNet-18 teacher labelling each batch) and tested. Writes JSON with
the machine, the command and the peak resident memory.

    python benchmarks/eval_memory.py --out benchmarks/results/eval_memory_imagenet1k_ipc50.json
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from dataclasses import replace

import torch

from dsco.data import ImageSet
from dsco.evaluate import ImageNetTeacher, evaluate_set, protocol_named
from dsco.fsio import atomic_write_json


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--ipc", type=int, default=50)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--test-images", type=int, default=1000)
    p.add_argument("--steps", type=int, default=1, help="training steps of the protocol (memory, not accuracy)")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    from torchvision.models import resnet18

    g = torch.Generator().manual_seed(0)
    n = a.classes * a.ipc
    t0 = time.time()
    images = torch.randint(0, 256, (n, 3, a.size, a.size), dtype=torch.uint8, generator=g)
    names = [f"c{i}" for i in range(a.classes)]
    train = ImageSet(images, torch.arange(a.classes).repeat_interleave(a.ipc), names, "synthetic")
    test = ImageSet(torch.randint(0, 256, (a.test_images, 3, a.size, a.size), dtype=torch.uint8, generator=g),
                    torch.arange(a.test_images) % a.classes, names, "synthetic")
    after_data = peak_rss_gib()
    teacher = ImageNetTeacher(resnet18().eval(), list(range(a.classes)))
    protocol = replace(protocol_named("imagenet1k"), max_steps=a.steps)
    r = evaluate_set(train, test, protocol, runs=1, teacher=teacher, progress=False)
    out = {
        "machine": f"{platform.node() or 'host'}: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "command": " ".join(["python", *sys.argv]),
        "set": {"classes": a.classes, "ipc": a.ipc, "size": a.size, "images": n, "storage": "uint8",
                "bytes_gib": round(images.numel() / 2**30, 2)},
        "protocol": "imagenet1k", "batch": protocol.batch_for(n, a.classes), "steps": r["steps"],
        "peak_rss_gib_after_data": round(after_data, 2), "peak_rss_gib": round(peak_rss_gib(), 2),
        "float32_set_gib": round(images.numel() * 4 / 2**30, 2), "seconds": round(time.time() - t0, 1),
    }
    atomic_write_json(a.out, out)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
