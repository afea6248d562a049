"""The step runner behind scripts/gpu_check.sh (read its header first).

Runs the steps in STEPS order (highest value first) under one global deadline
(GPU_BUDGET_S seconds from the start): a step starts only if at least its
`min_s` seconds are left, and runs under min(its own timeout, time left).
Each step runs in its own process group, killed whole at its timeout, so a hang
costs that step only. $OUT holds at most 8 files at any moment (what the GPU
lending tool brings back):

    gpu.log         this run's summary: machine, each step's status and the tail of its log
    step.log        the full log of the step running now (the last step's, at the end)
    logs.tar.gz     full logs of every finished step + status.json, rewritten after each step
    norm.json, attention_prefill.json, attention_decode.json, e2e.json, pipeline.json
                    the benchmark results, each written as soon as its benchmark ends

GPU_CHECK_DRY_RUN=1 runs every step's CPU smoke version instead (the same
plumbing, no GPU, no sanitizer): `STEPS="segv report" GPU_CHECK_DRY_RUN=1 OUT=/tmp/x bash scripts/gpu_check.sh`.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shlex
import signal
import subprocess
import sys
import tarfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
RESULT_FILES = ("norm.json", "attention_prefill.json", "attention_decode.json", "e2e.json", "pipeline.json")
MAX_OUT_FILES = 8  # the device tool's limit on files brought back from $OUT
KILL_GRACE_S = 5
RESERVE_S = 8  # kept free for the report step at the end


@dataclasses.dataclass
class Step:
    name: str
    est_s: int  # expected wall time on the H200 machine (16 cores)
    min_s: int  # not started with less than this left: it could not finish anything useful (a benchmark
    #             writes its JSON at its end, so its minimum is close to its expected time)
    timeout_s: int  # cap on its own run
    what: str
    needs: tuple = ("build",)  # steps that must have passed first


# In order of value: what the issue cannot do without comes first. Expected
# times: see scripts/gpu_check.sh's header (tests/test_gpu_check.py keeps the two equal).
STEPS = [
    Step("machine", 5, 1, 30, "GPU, driver, torch / transformers versions, compute-sanitizer, nproc", needs=()),
    Step("build", 90, 60, 300, "fastxf against the machine's torch, sm_90a only, all cores, ptxas -v", needs=()),
    Step("segv", 15, 10, 120, "norm bad-input RuntimeErrors on CUDA in a subprocess (the torch 2.11 segfault)"),
    Step("tests", 150, 60, 330, "pytest -m cuda tests/ (every CUDA test)"),
    Step("memcheck", 60, 30, 180, "compute-sanitizer memcheck: kernel_variants.py (every variant) + sanitizer_smoke.py"),
    Step("ceilings", 10, 5, 60, "copy bandwidth and bf16 matmul rate, shared by the benchmarks"),
    Step("bench_decode", 40, 30, 150, "attention decode grid vs every SDPA backend -> attention_decode.json",
         needs=("build", "ceilings")),
    Step("bench_prefill", 60, 50, 180, "attention prefill grid vs sdpa flash / cudnn / efficient -> attention_prefill.json",
         needs=("build", "ceilings")),
    Step("racecheck", 60, 30, 180, "compute-sanitizer racecheck: prefill + decode variants (--minimal)"),
    Step("synccheck", 30, 20, 120, "compute-sanitizer synccheck: prefill + decode variants (--minimal)"),
    Step("e2e", 280, 60, 540, "Llama-2-7B b1 static cache + compile, long context, BERT-base -> e2e.json",
         needs=("build", "ceilings")),
    Step("bench_norm", 120, 100, 240, "norms vs torch, torch.compile, HF -> norm.json", needs=("build", "ceilings")),
    Step("bench_pipeline", 60, 50, 150, "placement mechanics on one GPU -> pipeline.json", needs=("build", "ceilings")),
    Step("report", 3, 1, 60, "tables and target checks from the results JSON", needs=()),
]
DEFAULT_BUDGET_S = 420


def step_names():
    return [s.name for s in STEPS]


def plan(selected, budget_s):
    """The steps to consider, in priority order, with whether their expected times
    fit the budget (for the header printed at the start; the real decisions are
    taken as the clock runs, in Runner.run)."""
    out, t = [], 0
    for s in STEPS:
        if s.name not in selected:
            continue
        fits = t + s.min_s <= budget_s
        out.append((s, t, fits))
        t += s.est_s
    return out


def decide(step, now, deadline, failed_or_skipped):
    """('run', timeout) or ('skip', reason) for `step` at time `now`."""
    missing = [n for n in step.needs if n in failed_or_skipped]
    if missing:
        return "skip", f"needs {', '.join(missing)}, which did not pass"
    left = deadline - now
    if left < step.min_s:
        return "skip", f"budget: {left:.0f} s left, needs at least {step.min_s} s"
    return "run", int(max(1, min(step.timeout_s, left)))


# ------------------------------------------------------------------ commands

def _sanitizer(tool):
    """compute-sanitizer with its exit code set on findings. API errors that torch
    provokes on purpose (cudaErrorNotReady from stream / event queries) are not
    reported. No kernel filter: a filter that matched nothing would report a clean
    run; torch's own kernels in these scripts are elementwise copies and casts,
    cheap to check and free of shared memory and barriers."""
    return f"compute-sanitizer --tool {tool} --error-exitcode 7 --print-limit 30 --report-api-errors no"


def commands(dry: bool, out: str, work: str, budget_left=None):
    """step name -> bash command (run from the repository root). dry: the CPU smoke versions."""
    ceil = shlex.quote(os.path.join(work, "ceilings.json"))
    # The ceilings measured by the ceilings step when it ran, else each benchmark measures its own.
    ceil_arg = f'$([ -f {ceil} ] && echo "--ceilings-json {ceil}")'
    o = shlex.quote(out)
    py = "python3" if not dry else shlex.quote(PY)
    variants = f"{py} scripts/kernel_variants.py"
    c = {}
    c["machine"] = (
        "nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>&1 || "
        "echo 'no nvidia-smi'; "
        f"{py} -c 'import sys, torch, transformers; print(\"python\", sys.version.split()[0], \"torch\", "
        "torch.__version__, \"cuda\", torch.version.cuda, \"transformers\", transformers.__version__, "
        "\"gpu\", torch.cuda.is_available())'; nproc; "
        "(compute-sanitizer --version | tail -1) 2>&1 || echo 'no compute-sanitizer'; "
        "(nvcc --version | tail -2) 2>&1 || true"
    )
    if dry:
        c["build"] = (f"if ls python/fastxf/_C*.so >/dev/null 2>&1; then echo 'dry run: using the existing build'; "
                      f"else PYTHON={py} FASTXF_BUILD_DIR=build/cpu scripts/dev_build.sh -DFASTXF_CUDA=OFF; fi && "
                      f"{py} -m fastxf info")
    else:
        c["build"] = (
            "set -o pipefail; t0=$(date +%s); "
            "TORCH_CUDA_ARCH_LIST=9.0a FASTXF_JOBS=$(nproc) PYTHON=python3 FASTXF_BUILD_DIR=build/gpu "
            "scripts/dev_build.sh -DFASTXF_PTXAS_VERBOSE=ON -DFASTXF_CUDA=ON -DFASTXF_EMULATOR=OFF "
            '> "$GPU_CHECK_WORK/build_full.log" 2>&1; rc=$?; '
            'echo "build rc=$rc in $(( $(date +%s) - t0 )) s"; tail -5 "$GPU_CHECK_WORK/build_full.log"; '
            # ptxas: every kernel's registers / spills / shared memory; any spill is worth a look.
            'grep -E "Compiling entry|Used [0-9]+ registers|spill" "$GPU_CHECK_WORK/build_full.log" > "$GPU_CHECK_WORK/ptxas.txt"; '
            'echo "ptxas lines with spills:"; grep -B1 -E "[1-9][0-9]* bytes spill" "$GPU_CHECK_WORK/ptxas.txt" | head -40; '
            "[ $rc -eq 0 ] && python3 -m fastxf info"
        )
    dev = "cpu" if dry else "cuda"
    c["segv"] = (
        # One line per bad-input case, flushed, so a crash shows which case it was in; faulthandler
        # prints the Python stack on SIGSEGV. If it crashes: the native stack from cuda-gdb (there is
        # no gdb there), the same cases on CPU tensors, and the C++ runtimes the two libraries load.
        f"code='from tests.test_norm import check_torch_ops_errors as c; c(\"{dev}\")'; "
        f'{py} -X faulthandler -c "$code"; rc=$?; echo "bad-input run on {dev}: rc=$rc"; '
        'if [ $rc -ne 0 ]; then '
        f'  echo "--- the same on cpu tensors:"; {py} -X faulthandler -c "from tests.test_norm import check_torch_ops_errors as c; c(\'cpu\')"; '
        '  echo "--- native stack (cuda-gdb):"; '
        f'  timeout 90 cuda-gdb -q -batch -ex "set pagination off" -ex run -ex bt -ex "info sharedlibrary" --args {py} -c "$code" 2>&1 | grep -vE "^\\[(New|Thread)" | tail -80; '
        f'  echo "--- libraries:"; ldd python/fastxf/_C*.so | grep -E "c\\+\\+|gcc|torch|c10|cudart"; '
        f'  {py} -c "import torch; print(torch.__config__.show())" | head -20; gcc --version | head -1; '
        "fi; "
        # The cause named in a806bc5 (host code compiled by both nvcc and g++): any such function left?
        f"{py} scripts/odr_check.py {'build/cpu' if dry else 'build/gpu'} || true; exit $rc"
    )
    xdist = ("$(python3 -c 'import xdist' 2>/dev/null && echo -n '-n 4') "
             "$(python3 -c 'import pytest_timeout' 2>/dev/null && echo -n '--timeout 150')") if not dry else ""
    c["tests"] = (f"{py} -m pytest -q -m cuda -p no:cacheprovider -rfE {xdist} tests/" if not dry else
                  f"{py} -m pytest -q -m cuda -p no:cacheprovider -rfE tests/test_norm.py tests/test_attention_decode_cuda.py")
    nocache = "PYTORCH_NO_CUDA_MEMORY_CACHING=1 "  # every tensor its own allocation: overruns leave it
    if dry:
        c["memcheck"] = f"{variants} --device cpu --only norm,prefill,decode --minimal"
        c["racecheck"] = f"{variants} --device cpu --only prefill,decode --minimal"
        c["synccheck"] = c["racecheck"]
    else:
        c["memcheck"] = (
            f"{nocache}{_sanitizer('memcheck')} python3 scripts/kernel_variants.py; r1=$?; "
            f"{nocache}{_sanitizer('memcheck')} python3 scripts/sanitizer_smoke.py; r2=$?; "
            'echo "memcheck: kernel_variants rc=$r1, sanitizer_smoke rc=$r2 (7 = findings)"; [ $r1 -eq 0 ] && [ $r2 -eq 0 ]'
        )
        for tool in ("racecheck", "synccheck"):
            c[tool] = f"{_sanitizer(tool)} python3 scripts/kernel_variants.py --only prefill,decode --minimal"
    # The path travels as an argument: no quoting of it inside the Python source.
    if dry:
        c["ceilings"] = (f"{py} -c 'import json, sys; json.dump({{\"ceilings\": {{\"copy_gbps\": 1.0, "
                         f"\"matmul_tflops\": 1.0}}}}, open(sys.argv[1], \"w\"))' {ceil} && cat {ceil}")
    else:
        c["ceilings"] = ("python3 -c 'import json, sys; sys.path.insert(0, \"benchmarks\"); "
                         "from common import measure_ceilings; c = measure_ceilings(); "
                         f"json.dump({{\"ceilings\": c}}, open(sys.argv[1], \"w\")); print(c)' {ceil}")
    quick = " --device cpu --quick --repeats 1" if dry else ""
    c["bench_decode"] = f"{py} benchmarks/bench_attention_decode.py --out {o} {ceil_arg}{quick}"
    c["bench_prefill"] = f"{py} benchmarks/bench_attention_prefill.py --out {o} {ceil_arg}{quick}"
    c["bench_norm"] = f"{py} benchmarks/bench_norm.py --out {o} {ceil_arg}{quick}" + (" --no-compile" if dry else "")
    budget = f" --budget-s {int(budget_left)}" if budget_left else ""
    c["e2e"] = (f"{py} benchmarks/bench_e2e.py --out {o} {ceil_arg}{budget}"
                + (" --device cpu --smoke --configs llama-b1-static --repeats 1" if dry else ""))
    c["bench_pipeline"] = f"{py} benchmarks/bench_pipeline.py --out {o} {ceil_arg}" + (" --smoke" if dry else "")
    c["report"] = f"{py} benchmarks/report.py --targets {o}/*.json"
    return c


# ------------------------------------------------------------------ runner

class Runner:
    def __init__(self, out, work, budget_s, selected, dry, commit):
        self.out, self.work, self.budget_s, self.selected, self.dry = out, work, budget_s, selected, dry
        self.commit = commit
        self.status = []  # one dict per step considered
        self.logs = {}  # step name -> full log text (kept in memory for the tarball)
        os.makedirs(out, exist_ok=True)
        os.makedirs(work, exist_ok=True)
        self.summary = open(os.path.join(out, "gpu.log"), "a")

    def say(self, text):
        print(text, flush=True)
        self.summary.write(text + "\n")
        self.summary.flush()

    def bundle(self):
        """Rewrites logs.tar.gz (every finished step's log + status.json) atomically."""
        tmp = os.path.join(self.out, ".logs.tar.gz.tmp")
        with tarfile.open(tmp, "w:gz") as tar:
            def add(name, text):
                data = text.encode()
                info = tarfile.TarInfo(name)
                info.size, info.mtime = len(data), int(time.time())
                tar.addfile(info, io.BytesIO(data))

            add("status.json", json.dumps({"commit": self.commit, "budget_s": self.budget_s, "dry_run": self.dry,
                                           "steps": self.status}, indent=1))
            for i, (name, text) in enumerate(self.logs.items()):
                add(f"{i:02d}_{name}.log", text)
            for extra in ("build_full.log", "ptxas.txt"):
                p = os.path.join(self.work, extra)
                if os.path.exists(p):
                    with open(p, errors="replace") as f:
                        add(extra, f.read())
        os.replace(tmp, os.path.join(self.out, "logs.tar.gz"))

    def run_step(self, step, cmd, timeout):
        log_path = os.path.join(self.out, "step.log")
        env = dict(os.environ, PYTHONUNBUFFERED="1", GPU_CHECK_WORK=self.work, FASTXF_COMMIT=self.commit,
                   PYTHONPATH=os.pathsep.join(p for p in ("python", ".", os.environ.get("PYTHONPATH", "")) if p))
        t0 = time.time()
        with open(log_path, "w") as log:
            log.write(f"$ {cmd}\n")
            log.flush()
            proc = subprocess.Popen(["bash", "-c", cmd], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)
            timed_out = False
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                self._kill(proc)
                rc = proc.returncode
        with open(log_path, errors="replace") as f:
            text = f.read()
        return rc, timed_out, time.time() - t0, text

    @staticmethod
    def _kill(proc):
        # The whole process group: pytest workers, compute-sanitizer's target, compile workers.
        for sig, wait in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def run(self):
        start = time.time()
        deadline = start + self.budget_s
        self.say(f"=== gpu_check {time.strftime('%Y-%m-%d %H:%M:%S')} commit {self.commit} budget {self.budget_s} s"
                 + (" DRY RUN (CPU smoke versions)" if self.dry else ""))
        for s, t, fits in plan(self.selected, self.budget_s):
            self.say(f"  plan: {s.name:<15} expected {s.est_s:>3} s (from +{t:>3} s), min {s.min_s:>3} s, cap "
                     f"{s.timeout_s:>3} s{'' if fits else '  [likely past the budget]'}")
        bad = set()
        for s in STEPS:
            if s.name not in self.selected:
                continue
            now = time.time()
            # Every step but the last leaves a few seconds for the report and the final bundle.
            action, arg = decide(s, now, deadline if s.name == "report" else deadline - RESERVE_S, bad)
            if action == "skip":
                bad.add(s.name)
                self.status.append({"step": s.name, "status": "skipped", "why": arg})
                self.say(f"=== {s.name}: SKIPPED ({arg})")
                continue
            cmd = commands(self.dry, self.out, self.work, budget_left=max(1, deadline - now - 10))[s.name]
            self.say(f"=== {s.name} [{time.strftime('%H:%M:%S')}, +{now - start:.0f} s, limit {arg} s]: {s.what}")
            rc, timed_out, secs, text = self.run_step(s, cmd, arg)
            state = "TIMEOUT" if timed_out else ("ok" if rc == 0 else f"FAILED rc={rc}")
            if state != "ok":
                bad.add(s.name)
            self.status.append({"step": s.name, "status": state, "rc": rc, "seconds": round(secs, 1),
                                "limit_s": arg, "expected_s": s.est_s})
            self.logs[s.name] = text
            tail = text.rstrip().splitlines()[-(40 if s.name in ("tests", "report", "segv") else 15):]
            self.say("\n".join("    " + line[:300] for line in tail))
            self.say(f"=== {s.name}: {state} in {secs:.0f} s")
            self.bundle()
            self.check_out_files()
        self.say("=== summary (total {:.0f} s of {} s)".format(time.time() - start, self.budget_s))
        for st in self.status:
            self.say(f"  {st['step']:<15} {st['status']:<14} {st.get('seconds', '')!s:>6} {st.get('why', '')}")
        self.bundle()
        failed = [st for st in self.status if st["status"] not in ("ok", "skipped")]
        return 1 if failed else 0

    def check_out_files(self):
        names = sorted(n for n in os.listdir(self.out) if not n.startswith("."))
        if len(names) > MAX_OUT_FILES:
            self.say(f"WARNING: {len(names)} files in $OUT, only {MAX_OUT_FILES} come back: {names}")


def needs_build(selected) -> bool:
    """Whether the selected steps need fastxf built and no build is here."""
    import glob

    uses = {n for s in STEPS if s.name in selected for n in s.needs}
    return "build" in uses and not glob.glob(os.path.join(ROOT, "python", "fastxf", "_C*.so"))


def main(argv=None) -> int:
    out = os.path.abspath(os.environ.get("OUT") or os.path.join(ROOT, "out", "gpu"))
    work = os.path.abspath(os.environ.get("GPU_CHECK_WORK") or os.path.join("/tmp", f"fastxf_gpu_check_{os.getpid()}"))
    budget = float(os.environ.get("GPU_BUDGET_S", DEFAULT_BUDGET_S))
    names = step_names()
    wanted = os.environ.get("STEPS", "").split()
    unknown = [n for n in wanted if n not in names]
    if unknown:
        print(f"gpu_check: STEPS: unknown {' '.join(unknown)}; choose from: {' '.join(names)}", file=sys.stderr)
        return 2
    skip = os.environ.get("SKIP_STEPS", "").split()
    selected = [n for n in (wanted or names) if n not in skip]
    dry = os.environ.get("GPU_CHECK_DRY_RUN", "") == "1"
    if not dry and "build" not in selected and needs_build(selected):
        # A second call on a machine that stayed warm reuses the build; a fresh machine has none.
        print("gpu_check: no built fastxf._C here: adding the build step", flush=True)
        selected.append("build")
    commit = os.environ.get("FASTXF_COMMIT", "")
    if not commit:
        try:
            commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                    timeout=10).stdout.strip()
        except Exception:
            commit = ""
    commit = commit or "unknown (set FASTXF_COMMIT)"
    return Runner(out, work, budget, selected, dry, commit).run()


if __name__ == "__main__":
    sys.exit(main())
