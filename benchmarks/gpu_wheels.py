"""Prepare what the GPU check carries to a GPU machine without network: wheels and the embedded model, in two parts.

    python benchmarks/gpu_wheels.py            # builds .whl/ and .gpucheck/part1, .gpucheck/part2 (git-ignored)
    python benchmarks/gpu_wheels.py --verify   # only re-checks what is there

The GPU image (Python 3.12, CUDA 13, torch 2.11.0+cu130, transformers 5.17.0, peft, accelerate, triton, ...) lacks
unsloth, unsloth_zoo, trl, datasets, bitsandbytes, xformers, gguf and some small packages. Their wheels are
fetched for Python 3.12 manylinux x86_64 with --no-deps (so exactly the pinned set travels), cut to what training
needs (Unsloth's web UI `studio/`; bitsandbytes' libraries for other CUDA versions), and checked: every archive
intact, every file's hash equal to its RECORD line, and every Requires-Dist met by a wheel here or by a package
the image has. One call carries at most 64 MiB with the repository, and the embedded SmolLM2 GGUF alone is 94 MiB
(4-bit weights do not compress), so the GGUF is split: part 1 travels with the wheels in the install call, part 2
with the check call (benchmarks/gpu_check_device.sh joins them and checks the SHA-256).
"""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import click

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

WHEELS = REPO / ".whl"
PARTS = REPO / ".gpucheck"
CALL_LIMIT = 64 * 1024**2  # the device tool's limit on the working tree that travels with one call
MARGIN = 2 * 1024**2  # room for files the repository gains before the call
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

# The pinned set (requirements.txt's versions) the GPU image lacks, or has at a version not pinned here.
CARRIED = (
    "unsloth==2026.10.9", "unsloth_zoo==2026.10.9", "trl==1.15.0", "datasets==4.8.5", "bitsandbytes==0.50.2",
    "xformers==0.0.35", "peft==0.21.2", "gguf==0.19.0",
    # unsloth / unsloth_zoo / datasets / gguf needs the image lacks
    "tyro==1.0.17", "msgspec==0.22.0", "cut_cross_entropy==25.1.1", "torchao==0.18.0",
    "structlog==26.1.0", "json5==0.17.3", "nest-asyncio==1.6.0", "pydantic==2.13.4",
    "pydantic_core==2.46.4", "annotated-types==0.7.0", "typing-inspection==0.4.2", "docstring_parser==0.18.0",
    "typeguard==4.6.1", "dill==0.4.1", "multiprocess==0.70.19", "importlib_metadata==10.2.0",
    "lazy-importer==0.1.0",
)
# pip matches a manylinux tag exactly: bitsandbytes 0.50.2 is manylinux_2_24 only
# Declared by unsloth / unsloth_zoo but not needed to train text offline; left behind so that the wheels and the
# model fit two calls (10 MiB between them).
LEFT_BEHIND = {
    "diffusers": "image models only: no module of unsloth or unsloth_zoo outside studio/ imports it",
    "hf-transfer": "a faster hub downloader; unsloth_zoo looks for it with find_spec, and the machine is offline",
}
PLATFORMS = ("manylinux_2_35_x86_64", "manylinux_2_34_x86_64", "manylinux_2_31_x86_64", "manylinux_2_28_x86_64",
             "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
# Python packages on the GPU machines' image ('cuda'), as the workplace's KINDS.md read them on 2026-11-17, with
# the versions a session's pip list showed there (None: on the image, version not read).
IMAGE_PACKAGES = (
    "absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs certifi "
    "charset-normalizer click cloudpickle colorama contourpy cuda-bindings cuda-core cuda-pathfinder cuda-toolkit "
    "cycler einops filelock fonttools frozenlist fsspec h11 h5py hf-xet httpcore httpx huggingface-hub idna jinja2 "
    "joblib kiwisolver markdown markdown-it-py markupsafe matplotlib mdurl ml-dtypes mpmath msgpack multidict "
    "networkx ninja numpy nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 "
    "nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py "
    "nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx packaging pandas peft pillow pip propcache "
    "protobuf psutil pyarrow pygments pyparsing python-dateutil pyyaml regex requests rich safetensors scipy "
    "sentencepiece setuptools shellingham six sympy tokenizers torch torchvision tqdm transformers triton typer "
    "typing-extensions urllib3 wheel xxhash yarl zipp"
)
IMAGE: dict[str, str | None] = dict.fromkeys(IMAGE_PACKAGES.split())
IMAGE.update({"accelerate": "1.15.0", "huggingface-hub": "1.33.0", "numpy": "2.5.2", "safetensors": "0.8.0",
              "sentencepiece": "0.2.2", "tokenizers": "0.23.2", "torch": "2.11.0", "transformers": "5.17.0",
              "triton": "3.6.0", "torchvision": "0.26.0"})
# What is cut from a wheel: (wheel name prefix, pattern of archive paths to drop)
CUTS = (
    ("unsloth-", re.compile(r"^(unsloth/)?studio/")),  # the web UI, ~25 MB compressed; training never imports it
    # every GPU build but CUDA 13.0's (the CPU one stays: bitsandbytes loads it first)
    ("bitsandbytes-", re.compile(r"libbitsandbytes_(cuda(?!130\.)\d+|rocm\d+|xpu\d+)\.so$")),
)
ENVIRONMENT = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
               "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
               "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}


def normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned(spec: str) -> str:
    """`name==version` with the name normalized, to compare specs with wheels."""
    name, version = spec.split("==")
    return f"{normal(name)}=={version}"


def download(spec: str) -> None:
    """One wheel for the GPU machine's Python and platform, without its dependencies."""
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(WHEELS), spec],
                   check=True)


def record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def cut(wheel: Path, drop: re.Pattern[str]) -> int:
    """Rewrite a wheel without the files matching `drop` (and their RECORD lines); returns the bytes saved."""
    before = wheel.stat().st_size
    with (zipfile.ZipFile(wheel) as source, tempfile.NamedTemporaryFile(dir=wheel.parent, delete=False) as tmp,
          zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as target):
        for info in source.infolist():
            if drop.search(info.filename):
                continue
            data = source.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                data = "".join(line + "\n" for line in data.decode().splitlines()
                               if not drop.search(line.split(",")[0])).encode()
            target.writestr(info, data)
    Path(tmp.name).chmod(0o644)
    Path(tmp.name).replace(wheel)
    return before - wheel.stat().st_size


def verify(wheel: Path) -> list[str]:
    """Problems with one wheel: a damaged archive, a file whose hash is not its RECORD's, a RECORD file missing."""
    problems = []
    with zipfile.ZipFile(wheel) as archive:
        if archive.testzip() is not None:
            return [f"{wheel.name}: damaged archive member {archive.testzip()}"]
        names = set(archive.namelist())
        record = next(n for n in names if n.endswith(".dist-info/RECORD"))
        for line in archive.read(record).decode().splitlines():
            path, digest = line.split(",")[:2] if line.count(",") >= 2 else (line, "")
            if not digest:
                continue
            if path not in names:
                problems.append(f"{wheel.name}: {path} is in RECORD but not in the wheel")
            elif record_hash(archive.read(path)) != digest:
                problems.append(f"{wheel.name}: {path} does not match its RECORD hash")
    return problems


def requirements(wheel: Path) -> tuple[str, str, list[str]]:
    """The wheel's name, version and the Requires-Dist lines that apply on the GPU machine (no extras)."""
    from packaging.requirements import Requirement

    with zipfile.ZipFile(wheel) as archive:
        meta = archive.read(next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    meta = meta.replace("\r\n", "\n")
    name = re.search(r"^Name: (.+)$", meta, re.MULTILINE).group(1).strip()
    version = re.search(r"^Version: (.+)$", meta, re.MULTILINE).group(1).strip()
    needed = []
    for line in re.findall(r"^Requires-Dist: (.+)$", meta, re.MULTILINE):
        requirement = Requirement(line.strip())
        if requirement.marker is None or requirement.marker.evaluate(ENVIRONMENT):
            needed.append(str(requirement))
    return name, version, needed


def unmet(wheels: list[Path]) -> tuple[list[str], list[str]]:
    """Requirements no carried wheel or image package meets, and those met by the image at an unread version."""
    from packaging.requirements import Requirement

    carried = {}
    needs = []
    for wheel in wheels:
        name, version, needed = requirements(wheel)
        carried[normal(name)] = version
        needs += [(name, r) for r in needed]
    missing, assumed = [], []
    for owner, line in needs:
        requirement = Requirement(line)
        key = normal(requirement.name)
        version = carried.get(key, IMAGE.get(key, "absent"))
        if key in LEFT_BEHIND:
            assumed.append(f"{owner} needs {line}: left behind ({LEFT_BEHIND[key]})")
        elif version == "absent":
            missing.append(f"{owner} needs {line}: neither carried nor on the image")
        elif version is None:
            assumed.append(f"{owner} needs {line}: on the image, version not read")
        elif not requirement.specifier.contains(version, prereleases=True):
            missing.append(f"{owner} needs {line}: {version} is {'carried' if key in carried else 'on the image'}")
    return sorted(set(missing)), sorted(set(assumed))


def travelling_tree() -> int:
    """Bytes of the repository that travel with every call: tracked and untracked-not-ignored files."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    return sum((REPO / f).stat().st_size for f in files if f and (REPO / f).is_file())


def gguf_size() -> int:
    from llama_lora.model.assets import SMOLLM2_PACKAGE, package_dir

    return (package_dir(SMOLLM2_PACKAGE) / GGUF_NAME).stat().st_size


def split_model(first: int) -> str:
    """The embedded model's GGUF in two parts (part 1: `first` bytes); returns its SHA-256."""
    from llama_lora.model.assets import SMOLLM2_PACKAGE, package_dir

    data = (package_dir(SMOLLM2_PACKAGE) / GGUF_NAME).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    for part, chunk in (("part1", data[:first]), ("part2", data[first:])):
        folder = PARTS / part
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        (folder / f"{GGUF_NAME}.{part}").write_bytes(chunk)
    (PARTS / "part2" / "SHA256").write_text(f"{digest}  {GGUF_NAME}\n")
    return digest


def size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@click.command()
@click.option("--verify-only", "--verify", is_flag=True, help="Check the wheels and parts already there.")
def main(verify_only: bool) -> None:
    """Build (or check) .whl/ and .gpucheck/part1, part2 for benchmarks/gpu_check_device.sh."""
    if not verify_only:
        WHEELS.mkdir(exist_ok=True)
        wanted = {pinned(spec) for spec in CARRIED}
        for wheel in WHEELS.glob("*.whl"):  # a wheel of another version or package would travel too
            name, version, _ = requirements(wheel)
            if pinned(f"{name}=={version}") not in wanted:
                wheel.unlink()
        have = {pinned(f"{n}=={v}") for n, v, _ in map(requirements, WHEELS.glob("*.whl"))}
        for spec in CARRIED:
            if pinned(spec) not in have:  # fetched before: the folder is reused
                download(spec)
        for wheel in sorted(WHEELS.glob("*.whl")):
            for prefix, drop in CUTS:
                if wheel.name.startswith(prefix):
                    print(f"cut {wheel.name}: {cut(wheel, drop) / 1024**2:.1f} MiB less")
    wheels = sorted(WHEELS.glob("*.whl"))
    names = [normal(requirements(w)[0]) for w in wheels]
    problems = [p for w in wheels for p in verify(w)]
    problems += [f"two wheels of {n}" for n in set(names) if names.count(n) > 1]
    missing, assumed = unmet(wheels)
    tree, carried = travelling_tree(), size(WHEELS)
    if not verify_only:  # the same size both calls: each keeps the same room for the repository to grow
        split_model((gguf_size() - carried) // 2)
    part1, part2 = size(PARTS / "part1"), size(PARTS / "part2")
    print(f"{len(wheels)} wheels, {carried / 1024**2:.1f} MiB; repository {tree / 1024**2:.1f} MiB; "
          f"model part 1 {part1 / 1024**2:.1f} MiB, part 2 {part2 / 1024**2:.1f} MiB")
    print(f"install call carries {(tree + carried + part1) / 1024**2:.1f} MiB, check call "
          f"{(tree + part2) / 1024**2:.1f} MiB (limit {CALL_LIMIT / 1024**2:.0f} MiB each)")
    for line in assumed:
        print(f"  assumed: {line}")
    for line in missing + problems:
        print(f"  PROBLEM: {line}")
    over = max(tree + carried + part1, tree + part2) > CALL_LIMIT - MARGIN
    if over:
        print(f"  PROBLEM: a call leaves less than {MARGIN / 1024**2:.0f} MiB below the limit")
    sys.exit(1 if missing or problems or over else 0)


if __name__ == "__main__":
    main()
