#!/usr/bin/env python3
"""Deepen a CIFAR ResNet state_dict (safetensors, PyTorch names) to depth 6n+2 without
changing what it computes: each stage gets blocks n_old..n-1, copies of its last block whose
second batch norm has weight and bias 0. Such a block adds 0 to its shortcut and applies ReLU to
a non-negative input, so it is the identity; fine-tuning (`peregrine finetune`) then trains
the new blocks like the others. Used to make a ResNet-32 for the leveled path from the shared
ResNet-20 when no pretrained ResNet-32 is at hand. Standard library only.

    python3 tools/deepen_resnet.py ../shared/models/resnet20-cifar10.safetensors 32 resnet32-init.safetensors

An optional fourth argument g sets the new blocks' second batch-norm weight to g instead of 0:
the blocks are then near-identities whose residual branch is not folded away, so that a plan
of the deepened model has the structure of a trained one (`peregrine plan` before fine-tuning).
"""

import json
import re
import struct
import sys


def read(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop("__metadata__", {})
    tensors = {}
    for name, info in header.items():
        if info["dtype"] != "F32":
            raise SystemExit(f"{path}: tensor {name} is {info['dtype']}, expected F32")
        start, end = info["data_offsets"]
        tensors[name] = (info["shape"], data[start:end])
    return tensors, meta


def write(path, tensors, meta):
    header, blobs, offset = {"__metadata__": meta}, [], 0
    for name in sorted(tensors):
        shape, blob = tensors[name]
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for b in blobs:
            f.write(b)


def main():
    if len(sys.argv) not in (4, 5):
        raise SystemExit(__doc__)
    src, depth, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    gain = float(sys.argv[4]) if len(sys.argv) == 5 else 0.0
    if depth < 8 or (depth - 2) % 6:
        raise SystemExit(f"depth must be 6n+2 (20, 32, 44, 56, ...), got {depth}")
    tensors, meta = read(src)
    blocks = {}
    for name in tensors:
        m = re.match(r"layer(\d+)\.(\d+)\.", name)
        if m:
            stage, block = int(m.group(1)), int(m.group(2))
            blocks[stage] = max(blocks.get(stage, -1), block + 1)
    if sorted(blocks) != [1, 2, 3] or len(set(blocks.values())) != 1:
        raise SystemExit(f"{src}: not a 3-stage CIFAR ResNet (blocks per stage: {blocks})")
    old, new = blocks[1], (depth - 2) // 6
    if new < old:
        raise SystemExit(f"{src} has {old} blocks per stage; depth {depth} has {new}: deepening only")
    for stage in (1, 2, 3):
        last = f"layer{stage}.{old - 1}."
        for b in range(old, new):
            for name, (shape, blob) in list(tensors.items()):
                if name.startswith(last):
                    suffix = name[len(last):]
                    if suffix in ("bn2.weight", "bn2.bias"):
                        value = gain if suffix == "bn2.weight" else 0.0
                        blob = struct.pack(f"<{len(blob) // 4}f", *([value] * (len(blob) // 4)))
                    tensors[f"layer{stage}.{b}.{suffix}"] = (shape, blob)
    meta = dict(meta, deepened_from=f"{src} ({old} blocks per stage) to depth {depth}: new blocks' second batch-norm weight {gain}")
    write(out, tensors, meta)
    print(f"wrote {out}: depth {depth}, {new} blocks per stage ({new - old} identity blocks added per stage)")


if __name__ == "__main__":
    main()
