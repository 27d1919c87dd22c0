"""llama.cpp through its Python binding (llama-cpp-python) on the same GGUF, for scripts/profile.sh.

The benchmark harness measures raw speed with native llama.cpp (`llama-bench`, section 6 of
docs/benchmarks.md): the binding adds Python's per-token work to every decode step. This script is
what scripts/profile.sh runs under `perf record` (--profile), because it can open perf's gate around
one phase, which llama-bench cannot. Without --profile it measures the binding's speed by hand, e.g.
to see that overhead against llama-bench.

Run with the venv that scripts/install-llamacpp.sh makes:
    ~/.cache/splitinfer/llamacpp-venv/bin/python scripts/bench_llamacpp.py [--threads 2]

Measures, through llama-cpp-python's low-level `Llama.eval` (one `llama_decode` per batch, no
sampler), the median of N repeats of
  prefill: the first 512 tokens of the Brown news text (the model's own tokenizer), one batch
           (n_batch=512), on an empty KV cache; only the last position's logits unless
           --logits-all (which computes all 512, as a perplexity run does);
  decode:  64 greedy tokens, one token per `llama_decode`, timing only those 64 steps (the argmax
           between steps is not timed); twice: after a short prompt (`decode_tok_s`, context < 80)
           and right after the 512-token prefill (`decode_long_tok_s`, context 512..576), where
           attention over the KV cache is a larger part of each step.
The KV cache is cleared before every repeat. Prints one JSON object on stdout; llama.cpp's
system info (which SIMD paths it was built with) also goes to stderr.

With --profile PHASE (for scripts/profile.sh, under `perf record --control`), it instead runs
--profile-rounds (default 7) generations of the harness's profile (a 256-token prompt, then 256 greedy tokens), opens perf's gate
(PERF_CTL_FIFO / PERF_ACK_FIFO) only around PHASE (prefill or decode) and prints
`profiled<TAB>tokens<TAB>wall_ms`.
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import llama_cpp
from llama_cpp import Llama

CACHE = Path(os.environ.get("SPLITINFER_CACHE", Path.home() / ".cache" / "splitinfer"))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def loadavg() -> list:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def clear_kv(llm: Llama) -> None:
    """Forget every cached position: Llama.reset() makes the next eval overwrite from position 0
    (eval removes the cache from n_tokens on); llama_memory_clear makes sure nothing is kept."""
    llm.reset()
    mem = llama_cpp.llama_get_memory(llm._ctx.ctx)
    if mem is not None:
        llama_cpp.llama_memory_clear(mem, True)


def sync(llm: Llama) -> None:
    llama_cpp.llama_synchronize(llm._ctx.ctx)


def last_logits(llm: Llama) -> np.ndarray:
    # Llama.eval (0.3.x) copies logits into llm.scores only with logits_all; read them directly.
    ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),))


def prefill_once(llm: Llama, tokens: list) -> float:
    clear_kv(llm)
    t0 = time.perf_counter()
    llm.eval(tokens)  # len(tokens) <= n_batch: a single llama_decode
    sync(llm)
    dt = time.perf_counter() - t0
    assert llm.n_tokens == len(tokens)
    return len(tokens) / dt


def decode_once(llm: Llama, prompt: list, n_new: int) -> tuple:
    clear_kv(llm)
    llm.eval(prompt)
    tok = int(np.argmax(last_logits(llm)))
    out = [tok]
    elapsed = 0.0
    for _ in range(n_new):
        t0 = time.perf_counter()
        llm.eval([tok])
        sync(llm)
        elapsed += time.perf_counter() - t0
        tok = int(np.argmax(last_logits(llm)))
        out.append(tok)
    return n_new / elapsed, out


class PerfGate:
    """perf record's control FIFOs: sampling is on only between open() and close()."""

    def __init__(self):
        self.ctl = open(os.environ["PERF_CTL_FIFO"], "w")
        self.ack = open(os.environ["PERF_ACK_FIFO"], "r")
        self.wall = 0.0
        self.t0 = None

    def _command(self, cmd: str) -> None:
        self.ctl.write(cmd + "\n")
        self.ctl.flush()
        self.ack.readline()

    def open(self) -> None:
        self._command("enable")
        self.t0 = time.perf_counter()

    def close(self) -> None:
        self.wall += time.perf_counter() - self.t0
        self._command("disable")


def profile(llm: Llama, text_tokens: list, phase: str, rounds: int = 7, n_prompt: int = 256, n_new: int = 256) -> None:
    gate = PerfGate()
    prompt = text_tokens[:n_prompt]
    tokens = 0
    for _ in range(rounds):
        clear_kv(llm)
        if phase == "prefill":
            gate.open()
        llm.eval(prompt)
        sync(llm)
        if phase == "prefill":
            gate.close()
            tokens += len(prompt)
        tok = int(np.argmax(last_logits(llm)))
        if phase == "decode":
            gate.open()
        for _ in range(n_new - 1):
            llm.eval([tok])
            sync(llm)
            tok = int(np.argmax(last_logits(llm)))
        if phase == "decode":
            gate.close()
            tokens += n_new - 1
    print(f"profiled\t{tokens}\t{gate.wall * 1e3:.1f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=CACHE / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--text", type=Path, default=CACHE / "corpus" / "brown-news.txt")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prefill-tokens", type=int, default=512)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--prompt", default="The capital of France is")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--logits-all", action="store_true",
                    help="compute logits for every prefill position (as a perplexity run does)")
    ap.add_argument("--profile", choices=["prefill", "decode"],
                    help="the profile mode of scripts/profile.sh (see above)")
    ap.add_argument("--profile-rounds", type=int, default=7, help="generations in --profile mode")
    args = ap.parse_args()

    if not args.model.is_file():
        print(f"bench_llamacpp: no model at {args.model} (run `splitinfer fetch-assets`)", file=sys.stderr)
        return 1
    sysinfo = llama_cpp.llama_print_system_info()
    sysinfo = sysinfo.decode() if isinstance(sysinfo, bytes) else str(sysinfo)
    print(f"llama.cpp system info: {sysinfo}", file=sys.stderr)

    llm = Llama(
        model_path=str(args.model),
        n_threads=args.threads,
        n_threads_batch=args.threads,
        n_ctx=2048,
        n_batch=512,
        n_ubatch=512,
        n_gpu_layers=0,
        logits_all=args.logits_all,
        verbose=False,
    )

    # The first 512 tokens of the text; the first 64 KB is plenty for that.
    with open(args.text, encoding="utf-8") as f:
        text = f.read(64 * 1024)
    text_tokens = llm.tokenize(text.encode("utf-8"), add_bos=True)
    if len(text_tokens) < args.prefill_tokens:
        print(f"bench_llamacpp: {args.text} has only {len(text_tokens)} tokens", file=sys.stderr)
        return 1
    prefill_tokens = text_tokens[: args.prefill_tokens]
    if args.profile:
        profile(llm, text_tokens, args.profile, rounds=args.profile_rounds)
        return 0
    prompt_tokens = llm.tokenize(args.prompt.encode("utf-8"), add_bos=True)
    if max(len(prompt_tokens), len(prefill_tokens)) + 1 + args.decode_tokens > 2048:
        print("bench_llamacpp: prompt plus decode tokens exceed n_ctx 2048", file=sys.stderr)
        return 1

    load_before = loadavg()
    # Warm up (page in the mmapped weights, thread pool, allocator); not counted.
    prefill_once(llm, prefill_tokens)
    decode_once(llm, prompt_tokens, 8)

    prefills, decodes, decodes_long, generated = [], [], [], None
    for _ in range(args.repeats):
        prefills.append(prefill_once(llm, prefill_tokens))
        tps, out = decode_once(llm, prompt_tokens, args.decode_tokens)
        decodes.append(tps)
        generated = generated or out
        tps, _ = decode_once(llm, prefill_tokens, args.decode_tokens)
        decodes_long.append(tps)
    load_after = loadavg()

    result = {
        "llama_cpp_python": llama_cpp.__version__,
        "threads": args.threads,
        "prefill_tok_s": round(statistics.median(prefills), 1),
        "decode_tok_s": round(statistics.median(decodes), 1),
        "decode_long_tok_s": round(statistics.median(decodes_long), 1),
        "repeats": {
            "n": args.repeats,
            "prefill_tok_s": [round(x, 1) for x in prefills],
            "decode_tok_s": [round(x, 1) for x in decodes],
            "decode_long_tok_s": [round(x, 1) for x in decodes_long],
        },
        "cpu": cpu_model(),
        "model": str(args.model),
        "prefill_tokens": len(prefill_tokens),
        "prefill_logits": "all" if args.logits_all else "last",
        "decode_tokens": args.decode_tokens,
        "decode_prompt_tokens": len(prompt_tokens),
        "decode_text": llm.detokenize(generated).decode("utf-8", errors="replace"),
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "system_info": sysinfo.strip(),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
