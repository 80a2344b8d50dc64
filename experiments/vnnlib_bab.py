"""The six VNN-LIB instances that CROWN, alpha-CROWN and attacks left `unknown` (third_party.md),
decided again now that `decide` ends with branch-and-bound (issue 16).

Run alone: ``.venv/bin/python experiments/vnnlib_bab.py``; prints one line per instance (the
table in ``experiments/results/third_party.md`` was written from it by hand).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from nonuniform import load_model
from nonuniform.verify.decide import decide
from nonuniform.verify.vnnlib import parse_vnnlib

SHARED = Path(__file__).resolve().parents[2] / "shared" / "models" / "vnncomp2021"
RESNET_SPECS = "cifar10_resnet/vnnlib_properties_pgd_filtered/resnet2b_pgd_filtered"


def main() -> None:
    torch.set_num_threads(2)
    cases = [("cifar10_resnet/resnet_2b.onnx", f"{RESNET_SPECS}/prop_{k}_eps_0.008.vnnlib") for k in (0, 1)]
    for img in ("img4549", "img2908", "img4631", "img6638"):
        spec = next((SHARED / "oval21" / "vnnlib").glob(f"*{img}*"))
        cases.append(("oval21/cifar_base_kw.onnx", str(spec.relative_to(SHARED))))
    for net, prop in cases:
        model, card = load_model(str(SHARED / net))
        t = time.perf_counter()
        r = decide(model, parse_vnnlib(SHARED / prop), card.input_shape, timeout=60)
        print(
            Path(net).name,
            Path(prop).name,
            r.status,
            f"{time.perf_counter() - t:.1f}s",
            r.details,
            flush=True,
        )


if __name__ == "__main__":
    from nonuniform.runtime.threads import configure_threads

    configure_threads()  # the CLI's thread policy; importing the library sets none
    main()
