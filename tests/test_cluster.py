"""The installed package, on a standalone Spark cluster on loopback, as a user would run it.

The wheel is built from this checkout and installed (``--no-deps``) into a fresh virtual
environment that borrows pyspark, numpy, … from this interpreter (``--system-site-packages``);
every command runs from a temporary directory without ``PYTHONPATH``, so mfspark is imported
from the wheel, never from the checkout. A master and two one-core workers are started with
PySpark's own ``bin/spark-class`` on free ports, and the pipeline of the installed package is
``spark-submit``ted with the executors on the environment's Python. Its predictions must equal
those of a local-mode run of the same config, also when one executor JVM is killed (SIGKILL)
during training. The README's "Running on a cluster" shows these same commands.

Every process started here runs in its own process group and is stopped through it, also when
a test fails.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from mfspark import jobs

pytestmark = [pytest.mark.cluster, pytest.mark.spark]

ROOT = Path(__file__).resolve().parents[1]
# What a wheel is built from (the rest of a checkout may hold large outputs).
SOURCES = ("pyproject.toml", "setup.py", "README.md", "mfspark", "conf")
DATA = [
    *("--set", "synthetic.n_users=300", "--set", "synthetic.n_items=200"),
    *("--set", "synthetic.n_ratings=20000", "--set", "als.max_iter=6", "--set", "als.tol=0"),
    *("--set", "bpmf.samples=12", "--set", "bpmf.burn_in=4"),  # small data, few sweeps
]
# The stages that write predictions: the local reference runs these. The cluster runs these
# and the stages that read them; AutoRec and the blend (minutes of small Spark jobs on this
# cluster) are left to their own tests.
PREDICTION_STAGES = 'pipeline.stages=["prepare","train_als","train_bpmf"]'
CLUSTER_STAGES = (
    'pipeline.stages=["prepare","train_als","train_bpmf","build_autoencoder_inputs",'
    '"evaluate","recommend","report"]'
)
MODELS = ("als", "bpmf")
RUN_TIMEOUT = 1200  # seconds; only a hung run should meet it, even on a busy machine


def spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, n: int = 40) -> str:
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    return "\n".join(lines[-n:])


class Processes:
    """Processes started in their own process groups; :meth:`stop` ends each group by its pid."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, cmd: list[str], log: Path, env: dict, cwd: Path) -> subprocess.Popen:
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
            )
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            self._signal(proc, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            self._signal(proc, signal.SIGKILL)  # whatever is left of the group (executors, …)
            proc.wait()

    @staticmethod
    def _signal(proc: subprocess.Popen, sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)  # start_new_session: the group id is the pid
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def processes(request):
    procs = Processes()
    request.addfinalizer(procs.stop)
    return procs


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    python: Path
    tmp: Path
    env: dict

    def run(self, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
        """A command of the environment's bin/, run from the temporary directory."""
        cmd = [str(self.venv / "bin" / args[0]), *args[1:]]
        return subprocess.run(
            cmd, capture_output=True, text=True, env=self.env, cwd=self.tmp, timeout=timeout
        )


def clean_env(tmp: Path) -> dict:
    """This environment without anything that would import the checkout or steer PySpark."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON", "PYSPARK_SUBMIT_ARGS")
        and not k.startswith(("PYSPARK_GATEWAY", "SPARK_"))
    }
    for name in ("conf", "local"):
        (tmp / name).mkdir(exist_ok=True)
    env.update(
        SPARK_CONF_DIR=str(tmp / "conf"),  # empty: no spark-defaults.conf of this machine
        SPARK_LOCAL_DIRS=str(tmp / "local"),
        SPARK_LOCAL_IP="127.0.0.1",
    )
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    """``pip wheel`` of the checkout, installed alone into a fresh virtual environment."""
    tmp = tmp_path_factory.mktemp("installed")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, src / name)
    env = clean_env(tmp)
    pip = [sys.executable, "-m", "pip"]

    def check(cmd: list[str]) -> None:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp, timeout=600)
        assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}"

    check([*pip, "wheel", "--no-deps", "-w", "dist", "./src"])
    (wheel,) = (tmp / "dist").glob("mfspark-*.whl")
    venv = tmp / "venv"
    check([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)])
    check([*pip, "--python", str(venv / "bin" / "python"), "install", "--no-deps", str(wheel)])
    return Installed(wheel, venv, venv / "bin" / "python", tmp, env)


def read_predictions(out: Path, model: str) -> dict[str, np.ndarray]:
    """One model's test predictions (``<out>/predictions/model=<model>``), sorted."""
    table = pq.read_table(out / "predictions" / f"model={model}")
    frame = table.to_pandas().sort_values(["user_id", "item_id"], kind="stable")
    return {c: frame[c].to_numpy() for c in ("user_id", "item_id", "rating", "prediction")}


def assert_same_predictions(got: dict, expected: dict) -> None:
    for col in ("user_id", "item_id", "rating"):
        np.testing.assert_array_equal(got[col], expected[col], err_msg=col)
    np.testing.assert_allclose(got["prediction"], expected["prediction"], rtol=0, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# The installed package


def test_wheel_holds_every_package_and_the_shipped_configs(installed):
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    packages = sorted(p.parent for p in (ROOT / "mfspark").rglob("__init__.py"))
    assert len(packages) >= 2
    for pkg in packages:
        init = pkg.relative_to(ROOT).as_posix() + "/__init__.py"
        assert init in names, f"{init} is not in the wheel"
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "mfspark").rglob("*.py")}
    assert modules <= names, sorted(modules - names)
    configs = sorted((ROOT / "conf").glob("*.toml"))
    assert configs
    with zipfile.ZipFile(installed.wheel) as whl:
        for conf in configs:  # the checkout's conf/ is the only source of the package's copy
            assert whl.read(f"mfspark/conf/{conf.name}") == conf.read_bytes(), conf.name
        entry_points = whl.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert re.search(r"^mfspark = mfspark\.cli:main$", entry_points, flags=re.M)


def test_installed_package_is_imported_from_the_environment(installed):
    code = (
        "import mfspark, mfspark.config as c; from mfspark import BiasedALS; "
        "print(mfspark.__file__); print(c.DEFAULT_CONFIG); print(BiasedALS.__module__)"
    )
    done = installed.run("python", "-c", code)
    assert done.returncode == 0, done.stderr
    module_file, default_config, estimator_module = done.stdout.split()
    site = installed.venv / "lib"
    assert Path(module_file).is_relative_to(site), module_file
    assert Path(default_config).is_relative_to(site) and default_config.endswith("conf/local.toml")
    assert estimator_module == "mfspark.ml"


def test_console_script_and_python_m_list_every_job(installed):
    for cmd in (("mfspark", "--help"), ("python", "-m", "mfspark", "--help")):
        done = installed.run(*cmd)
        assert done.returncode == 0, done.stderr
        for job in jobs.JOBS:
            assert re.search(rf"^  {job.name} +{re.escape(job.description)}$", done.stdout, re.M), job
    done = installed.run("mfspark", "job-path")
    assert done.returncode == 0, done.stderr
    path = Path(done.stdout.strip())
    assert path.is_file() and path.name == "__main__.py"
    assert path.is_relative_to(installed.venv)


@dataclass(frozen=True)
class Run:
    proc: subprocess.Popen
    log: Path
    out: Path

    def wait(self) -> str:
        """Wait for the run to end; it must succeed. Returns its log."""
        try:
            code = self.proc.wait(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.log.name}: still running after {RUN_TIMEOUT} s:\n{tail(self.log)}")
        assert code == 0, f"{self.log.name}: exit code {code}\n{tail(self.log, 80)}"
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="module")
def local_run(installed, processes) -> Run:
    """The pipeline of the installed package in local mode, started in the background."""
    out, log = installed.tmp / "out-local", installed.tmp / "local.log"
    cmd = [str(installed.venv / "bin" / "mfspark"), "pipeline", "--set", f"output.path={out}"]
    cmd += ["--set", "spark.master=local[2]", "--set", "spark.conf.spark.ui.enabled=false", *DATA]
    cmd += ["--set", PREDICTION_STAGES]  # the predictions are all it is compared on
    return Run(processes.start(cmd, log, installed.env, installed.tmp), log, out)


@pytest.fixture(scope="module")
def local_predictions(installed, local_run):
    """The predictions of the local-mode run: what every cluster run must reproduce."""
    log = local_run.wait()
    assert f"({installed.venv}/lib/" in log  # the installed copy ran the job
    predictions = {model: read_predictions(local_run.out, model) for model in MODELS}
    for got in predictions.values():
        assert len(got["prediction"]) > 1000
        assert np.isfinite(got["prediction"]).all()
    return predictions


# ---------------------------------------------------------------------------------------------
# The cluster


@dataclass(frozen=True)
class Cluster:
    master_url: str
    worker_pids: tuple[int, ...]


def wait_for(pattern: str, log: Path, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and re.search(pattern, log.read_text(errors="replace")):
            return
        if proc.poll() is not None:
            pytest.fail(f"{log.name}: process exited with {proc.returncode}:\n{tail(log)}")
        time.sleep(0.2)
    pytest.fail(f"{log.name}: no {pattern!r} after {timeout} s:\n{tail(log)}")


@pytest.fixture(scope="module")
def cluster(installed, processes, local_run) -> Cluster:
    """One master and two workers (one core, 1 GiB each) on 127.0.0.1, on free ports.

    Started while the local-mode run (``local_run``) is going: the JVMs start meanwhile.
    """
    tmp = installed.tmp / "cluster"
    tmp.mkdir()
    spark_class = str(spark_home() / "bin" / "spark-class")
    port = free_port()
    master_url = f"spark://127.0.0.1:{port}"
    master_cmd = [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1"]
    master_cmd += ["--port", str(port), "--webui-port", str(free_port())]
    master_log = tmp / "master.log"
    master = processes.start(master_cmd, master_log, installed.env, tmp)
    wait_for(r"I have been elected leader", master_log, master, 120)
    workers = []
    for i in (1, 2):
        work = tmp / f"worker{i}"
        work.mkdir()
        cmd = [spark_class, "org.apache.spark.deploy.worker.Worker", master_url, "--host", "127.0.0.1"]
        cmd += ["--port", str(free_port()), "--webui-port", str(free_port())]
        cmd += ["--cores", "1", "--memory", "1g", "--work-dir", str(work)]
        log = tmp / f"worker{i}.log"
        workers.append((processes.start(cmd, log, installed.env, tmp), log))
    for proc, log in workers:
        wait_for(r"Successfully registered with master", log, proc, 120)
    return Cluster(master_url, tuple(proc.pid for proc, _ in workers))


def submit(installed: Installed, cluster: Cluster, processes: Processes, name: str, *sets: str) -> Run:
    """``spark-submit`` of the installed package's pipeline to the cluster, in the background."""
    done = installed.run("mfspark", "job-path")
    assert done.returncode == 0, done.stderr
    out, log = installed.tmp / f"out-{name}", installed.tmp / f"{name}.log"
    cmd = [
        str(spark_home() / "bin" / "spark-submit"),
        *("--master", cluster.master_url),
        *("--conf", f"spark.pyspark.python={installed.python}"),
        *("--conf", "spark.ui.enabled=false"),
        done.stdout.strip(),
        "pipeline",
        *("--set", f"output.path={out}"),
        *DATA,
        *sets,
    ]
    return Run(processes.start(cmd, log, installed.env, installed.tmp), log, out)


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:  # field 4: the parent's pid
                found.append(int(entry))
    return found


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def executor_pids(cluster: Cluster) -> list[int]:
    """The executor JVMs: children of the worker JVMs running CoarseGrainedExecutorBackend."""
    return [
        pid
        for worker in cluster.worker_pids
        for pid in children(worker)
        if any("CoarseGrainedExecutorBackend" in arg for arg in cmdline(pid))
    ]


def check_driver_log(text: str, cluster: Cluster, installed: Installed) -> None:
    assert f"master {cluster.master_url}" in text  # ran on the cluster, not locally
    assert f"({installed.venv}/lib/" in text  # the driver ran the installed copy


def test_spark_submit_of_the_installed_pipeline_survives_an_executor_kill_and_matches_local_mode(
    installed, cluster, processes, local_predictions
):
    """The pipeline (every stage but AutoRec and the blend), submitted to the cluster with ALS
    in partitioned exchange (factors kept on the executors); one executor JVM is SIGKILLed
    during ALS training. Every model's predictions equal the local-mode run's, whose ALS
    broadcasts its factors."""
    run = submit(
        installed,
        cluster,
        processes,
        "cluster",
        "--set",
        CLUSTER_STAGES,
        "--set",
        "als.exchange=partitioned",
    )
    wait_for(r"als iteration 2:", run.log, run.proc, RUN_TIMEOUT)
    executors = executor_pids(cluster)
    assert len(executors) == 2, executors
    # The executors' Python workers are the environment's interpreter.
    pythons = {cmdline(child)[0] for pid in executors for child in children(pid)}
    assert str(installed.python) in pythons, pythons
    logged_before_kill = len(run.log.read_text(errors="replace"))
    os.kill(executors[0], signal.SIGKILL)
    text = run.wait()
    check_driver_log(text, cluster, installed)
    after = text[logged_before_kill:]
    assert re.search(r"Lost executor \d+", after), tail(run.log, 80)  # Spark saw the loss ...
    assert re.search(r"als iteration [3-6]:", after)  # ... while training went on
    assert "ALS factor exchange: partitioned (als.exchange=partitioned)" in text
    for model in MODELS:
        assert_same_predictions(read_predictions(run.out, model), local_predictions[model])
    # The stages after training ran on the cluster too.
    for name in ("recommendations/model=als", "metrics/summary", "report/index.html"):
        assert (run.out / name).exists(), name
