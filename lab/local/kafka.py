"""A real Kafka broker for tests and the demo, found in this order.

1. ``KAFKA_BOOTSTRAP_SERVERS`` names an existing cluster: use it as it is.
2. A Docker engine answers a ping: testcontainers' Kafka in KRaft mode.
3. Otherwise the official broker jars (resolved once from Maven Central by ``mvn`` with
   ``deploy/kafka/pom.xml`` into the user cache) run as a single-node KRaft broker on this JVM,
   on 127.0.0.1 and free ports, with storage in a run directory removed when it stops.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.local.process import (
    LaunchError,
    free_port,
    make_run_dir,
    spawn,
    stop,
    sweep_orphaned_run_dirs,
    wait_until,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
KAFKA_DEPLOY_DIR = PROJECT_ROOT / "deploy" / "kafka"
CONTAINER_IMAGE = "confluentinc/cp-kafka:7.9.0"  # Confluent Platform 7.9 ships Apache Kafka 3.9


@dataclass(frozen=True)
class KafkaEndpoint:
    """Where the broker is, which version it runs, and how it was found (env, testcontainers or jvm)."""

    bootstrap_servers: str
    version: str
    source: str

    def describe(self) -> str:
        return f"Apache Kafka {self.version} ({self.source}) at {self.bootstrap_servers}"


def cache_root() -> Path:
    """The user's cache dir for downloads this project keeps between runs."""
    explicit = os.environ.get("STOCKSYNC_CACHE_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "stocksync"


def pom_kafka_version(pom: Path) -> str:
    """The ``kafka.version`` property of the broker pom: the single place the version is chosen."""
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    node = ET.parse(pom).getroot().find("m:properties/m:kafka.version", ns)  # noqa: S314 - our own file
    if node is None or not (node.text or "").strip():
        raise LaunchError(f"{pom} has no <kafka.version> property; add one (e.g. 3.9.2).")
    return (node.text or "").strip()


def ensure_broker_jars(pom: Path | None = None, cache: Path | None = None) -> tuple[Path, str]:
    """Resolve the broker's runtime jars once; later calls return the cached directory at once."""
    pom = pom or KAFKA_DEPLOY_DIR / "pom.xml"
    version = pom_kafka_version(pom)
    base = (cache or cache_root()) / "kafka" / version
    libs, marker = base / "libs", base / ".complete"
    if marker.exists():
        return libs, version
    base.mkdir(parents=True, exist_ok=True)
    with (base / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test run or the demo may be resolving right now
        if marker.exists():
            return libs, version
        mvn = shutil.which("mvn")
        if mvn is None:
            raise LaunchError(
                "Maven (mvn) is not on PATH, so the Kafka broker jars cannot be fetched. Install it "
                "(apt-get install maven) or point KAFKA_BOOTSTRAP_SERVERS at an existing broker."
            )
        partial = base / "libs.partial"
        shutil.rmtree(partial, ignore_errors=True)
        argv = [
            mvn,
            "-B",
            "-q",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={partial}",
            "-DincludeScope=runtime",
        ]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)  # noqa: S603
        if done.returncode != 0:
            raise LaunchError(
                f"mvn could not resolve Apache Kafka {version} from Maven Central (exit {done.returncode}).\n"
                f"{done.stdout[-2000:]}{done.stderr[-2000:]}\n"
                "Check that Maven Central is reachable, or set KAFKA_BOOTSTRAP_SERVERS."
            )
        shutil.rmtree(libs, ignore_errors=True)
        partial.rename(libs)
        marker.write_text("\n".join(sorted(p.name for p in libs.iterdir())) + "\n")
    return libs, version


def docker_engine_answers() -> bool:
    """True only if a Docker engine actually answers; a docker client alone is not enough."""
    # No DOCKER_HOST and no local socket: nothing can answer, and the SDK would leak a socket finding out.
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        return False
    try:
        import docker
        from docker.errors import DockerException
    except ImportError:
        return False
    try:
        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (DockerException, OSError):
        return False


def broker_answers_metadata(bootstrap: str, timeout_s: float = 3.0) -> bool:
    """True once the broker answers a metadata request and lists itself."""
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1.0):
            pass
    except OSError:
        return False
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    try:
        return bool(admin.list_topics(timeout=timeout_s).brokers)
    except KafkaException:
        return False


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not Path(java).exists():
        raise LaunchError(
            "No Java runtime found (java on PATH or JAVA_HOME): the local Kafka broker needs one."
        )
    return java


class JvmKafkaBroker:
    """One combined broker+controller KRaft node on 127.0.0.1, from the jars in `libs`."""

    def __init__(self, libs: Path, version: str, *, partitions: int = 4, heap: str = "768m") -> None:
        self.libs, self.version, self.partitions, self.heap = libs, version, partitions, heap
        self._proc: subprocess.Popen[bytes] | None = None
        self.run_dir: Path | None = None
        self.bootstrap = ""

    def _properties(self, port: int, controller_port: int, data: Path) -> str:
        props: dict[str, Any] = {
            "process.roles": "broker,controller",
            "node.id": 1,
            "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "controller.quorum.bootstrap.servers": f"127.0.0.1:{controller_port}",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(data),
            "num.partitions": self.partitions,
            "offsets.topic.replication.factor": 1,
            "offsets.topic.num.partitions": 4,
            "transaction.state.log.replication.factor": 1,
            "transaction.state.log.min.isr": 1,
            "transaction.state.log.num.partitions": 4,
            "group.initial.rebalance.delay.ms": 0,
            "auto.create.topics.enable": "true",
            "delete.topic.enable": "true",
        }
        return "".join(f"{k}={v}\n" for k, v in props.items())

    def start(self, timeout_s: float = 90.0, *, cluster_id: str | None = None) -> str:
        """Format fresh KRaft storage (a random cluster id unless given), launch, wait for metadata."""
        sweep_orphaned_run_dirs()
        java = _java()
        self.run_dir = run_dir = make_run_dir("kafka")
        port, controller_port = free_port(), free_port()
        props = run_dir / "server.properties"
        props.write_text(self._properties(port, controller_port, run_dir / "data"))
        classpath = f"{self.libs}/*"
        log4j = f"-Dlog4j.configuration=file:{KAFKA_DEPLOY_DIR / 'log4j.properties'}"
        cluster_id = cluster_id or base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        fmt = subprocess.run(  # noqa: S603
            [
                java,
                log4j,
                "-cp",
                classpath,
                "kafka.tools.StorageTool",
                "format",
                "--standalone",
                # '=' form: a base64url id may start with '-', which argparse would take for an option
                f"--cluster-id={cluster_id}",
                f"--config={props}",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if fmt.returncode != 0:
            raise LaunchError(f"Formatting Kafka storage failed:\n{fmt.stdout}{fmt.stderr}")
        self.bootstrap = f"127.0.0.1:{port}"
        self._launch(timeout_s)
        return self.bootstrap

    def _launch(self, timeout_s: float) -> None:
        if self.run_dir is None:
            raise LaunchError("the broker was never started: call start() first")
        log_file = self.run_dir / "broker.log"
        self._proc = spawn(
            [
                _java(),
                f"-Xmx{self.heap}",
                "-Xms256m",
                # the GC flags Kafka's own kafka-run-class.sh starts brokers with: short G1 pauses
                "-XX:+UseG1GC",
                "-XX:MaxGCPauseMillis=20",
                "-XX:InitiatingHeapOccupancyPercent=35",
                "-XX:+ExplicitGCInvokesConcurrent",
                "-Djava.awt.headless=true",
                f"-Dkafka.logs.dir={self.run_dir / 'logs'}",
                f"-Dlog4j.configuration=file:{KAFKA_DEPLOY_DIR / 'log4j.properties'}",
                "-cp",
                f"{self.libs}/*",
                "kafka.Kafka",
                str(self.run_dir / "server.properties"),
            ],
            log_file=log_file,
            death_signal=signal.SIGKILL,  # orphaned: nothing to shut down gracefully for
        )
        wait_until(
            lambda: broker_answers_metadata(self.bootstrap),
            timeout_s=timeout_s,
            proc=self._proc,
            what=f"Kafka {self.version} broker",
            log_file=log_file,
            interval_s=0.2,
        )

    def halt(self) -> None:
        """Stop the broker process but keep its data and ports, for `resume` (outage tests)."""
        if self._proc is not None:
            stop(self._proc, sig=signal.SIGTERM, grace_s=30.0)
            self._proc = None

    def resume(self, timeout_s: float = 90.0) -> None:
        """Start a halted broker again on the same address, with the data it had."""
        if self._proc is None:
            self._launch(timeout_s)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def stop(self) -> None:
        if self._proc is not None:
            stop(self._proc, sig=signal.SIGTERM, grace_s=30.0)
            self._proc = None
        if self.run_dir is not None:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            self.run_dir = None


@contextlib.contextmanager
def local_kafka(*, partitions: int = 4) -> Iterator[KafkaEndpoint]:
    """Yield a broker address; stop and clean up whatever was started here when the block ends."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        if not broker_answers_metadata(external, timeout_s=10):
            raise LaunchError(
                f"KAFKA_BOOTSTRAP_SERVERS={external} does not answer a metadata request. Start that "
                "cluster, or unset the variable to let the project start its own broker."
            )
        yield KafkaEndpoint(external, "unknown (external cluster)", "env")
        return
    if docker_engine_answers():
        from testcontainers.community.kafka import KafkaContainer

        with KafkaContainer(CONTAINER_IMAGE).with_kraft() as container:
            yield KafkaEndpoint(container.get_bootstrap_server(), "3.9 (cp-kafka 7.9)", "testcontainers")
        return
    libs, version = ensure_broker_jars()
    broker = JvmKafkaBroker(libs, version, partitions=partitions)
    try:
        broker.start()
        yield KafkaEndpoint(broker.bootstrap, version, f"jvm, pid {broker.pid}")
    finally:
        broker.stop()
