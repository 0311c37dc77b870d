"""The binaries on several processes: JAX's distributed runtime started from
flags, and a check that every process was started alike.

Every binary takes --coordinator_address, --num_processes and --process_id
(or JAX's own JAX_COORDINATOR_ADDRESS with our JAX_NUM_PROCESSES and
JAX_PROCESS_ID; --num_processes=0 lets `jax.distributed.initialize` find
them on SLURM, Open MPI, Cloud TPU and the like). `start` calls
`jax.distributed.initialize` before anything touches a JAX backend (CPU
hosts get Gloo collectives), then compares every process's flags: all
processes run the same program (SPMD), so a process with other flags would
enter other collectives and hang. What does not agree, and a coordinator
nobody reaches within --distributed_timeout seconds, stops every process
with one line.

After `start`, `jax.devices()` lists every process's devices: --devices=0
trains over all of them, each process passing the same global batches
(`kpjax.parallel.shard_batch` places its own rows). Process 0 writes the
result files and holds the workdir (`experiments.results`,
`experiments.workdir`); orbax checkpoints are written by every process.

May import: absl, jax, numpy.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np
from absl import flags, logging

# The launch flags say where this process is in the job, not what it
# computes; they are not config fields (a config is the same in every process).
DEFAULT_TIMEOUT = 120
# Flags that differ between processes by design.
PER_PROCESS = ("process_id",)


def define_flags(module_name: str) -> None:
    own = {"module_name": module_name}
    flags.DEFINE_string("coordinator_address", None,
                        "host:port of process 0 for several processes (jax.distributed; "
                        "default $JAX_COORDINATOR_ADDRESS)", **own)
    flags.DEFINE_integer("num_processes", None,
                         "processes of the job (default $JAX_NUM_PROCESSES, else 1); 0 = detected "
                         "by jax.distributed (SLURM, Open MPI, Cloud TPU)", **own)
    flags.DEFINE_integer("process_id", None, "this process's index, 0 .. --num_processes-1 "
                         "(default $JAX_PROCESS_ID)", **own)
    flags.DEFINE_integer("distributed_timeout", DEFAULT_TIMEOUT,
                         "seconds to wait for every process at the start before giving up", **own)


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"${name} must be an integer, got {value!r}") from None


def launch(values: Mapping[str, Any]) -> dict[str, Any]:
    """The launch settings of parsed flag values, with JAX's environment
    variables as defaults, checked. `num_processes` is None when a cluster
    is to be detected; 1 means no distributed runtime.

    Raises:
      ValueError: a missing coordinator, a process id out of range, a
        non-positive timeout.
    """
    address = values.get("coordinator_address") or os.environ.get("JAX_COORDINATOR_ADDRESS")
    processes = values.get("num_processes")
    processes = _env_int("JAX_NUM_PROCESSES") if processes is None else processes
    process = values.get("process_id")
    process = _env_int("JAX_PROCESS_ID") if process is None else process
    timeout = values.get("distributed_timeout", DEFAULT_TIMEOUT)
    if timeout is None or timeout < 1:
        raise ValueError(f"--distributed_timeout must be >= 1 second, got {timeout}")
    if processes is None:
        processes = 1
    if processes < 0:
        raise ValueError(f"--num_processes must be >= 1 (0 = detected from the cluster), got {processes}")
    if processes == 0:
        return {"coordinator_address": address, "num_processes": None, "process_id": process,
                "timeout": timeout}
    if processes == 1:
        if process not in (None, 0):
            raise ValueError(f"--process_id={process} with one process; set --num_processes")
        return {"coordinator_address": address, "num_processes": 1, "process_id": 0, "timeout": timeout}
    if not address:
        raise ValueError(f"--num_processes={processes} needs --coordinator_address=host:port "
                         "(process 0's host; or $JAX_COORDINATOR_ADDRESS)")
    if process is None or not 0 <= process < processes:
        raise ValueError(f"--process_id must be one of 0..{processes - 1} with --num_processes="
                         f"{processes}, got {process}")
    return {"coordinator_address": address, "num_processes": processes, "process_id": process,
            "timeout": timeout}


def start(values: Mapping[str, Any]) -> None:
    """Starts JAX's distributed runtime when the flags ask for several
    processes and checks that every process got the same flags.

    Raises:
      ValueError: bad launch flags (`launch`), a coordinator not reached or
        processes missing after the timeout, flags that differ between
        processes.
    """
    settings = launch(values)
    if settings["num_processes"] == 1:
        return
    import jax
    # The CPU backend's collectives across processes (GPU/TPU backends have their own).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # A process that never comes makes JAX's coordination client abort the
    # process from C++ (LOG(FATAL), a stack trace) once its own deadline
    # passes; a watchdog with the one line goes first.
    where = (f"coordinator {settings['coordinator_address']}, process {settings['process_id']} of "
             f"{settings['num_processes']}")
    watchdog = threading.Timer(settings["timeout"], _give_up, (
        f"the distributed start failed within {settings['timeout']} s (--distributed_timeout): {where}; "
        "not every process reached the coordinator: start all of them, each with the same "
        "--coordinator_address and --num_processes",))
    watchdog.daemon = True
    watchdog.start()
    try:
        jax.distributed.initialize(coordinator_address=settings["coordinator_address"],
                                   num_processes=settings["num_processes"],
                                   process_id=settings["process_id"],
                                   initialization_timeout=settings["timeout"] + 60)
    except (RuntimeError, ValueError) as e:  # jaxlib's XlaRuntimeError is a RuntimeError
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise ValueError(f"the distributed start failed: {where} ({first})") from None
    finally:
        watchdog.cancel()
    check_same_flags(values)
    logging.info("process %d of %d: %d of the job's %d devices", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())


def _give_up(message: str) -> None:
    """Stops the process from the watchdog's thread with the usage-error line."""
    sys.stderr.write(f"usage error: {message}\n")
    sys.stderr.flush()
    os._exit(2)


def check_same_flags(values: Mapping[str, Any]) -> None:
    """Every process's flags (but --process_id) equal process 0's.

    Raises:
      ValueError: naming the flags in which this process differs from process 0.
    """
    from jax.experimental import multihost_utils
    own = {k: v for k, v in values.items() if k not in PER_PROCESS}
    text = json.dumps(own, sort_keys=True, default=str).encode()
    # Every process's flags to every process (a few hundred bytes each),
    # padded to one length, so that the differing ones can be named.
    length = int(np.max(multihost_utils.process_allgather(np.array([len(text)], np.int64))))
    texts = multihost_utils.process_allgather(np.frombuffer(text.ljust(length, b" "), np.uint8))
    parsed = [json.loads(bytes(np.asarray(t, np.uint8)).decode()) for t in texts]
    reference = parsed[0]
    differ = {i: sorted(k for k in set(p) | set(reference) if p.get(k) != reference.get(k))
              for i, p in enumerate(parsed) if p != reference}
    if not differ:
        return
    raise ValueError("the processes were started with different flags: " + "; ".join(
        f"process {i} differs from process 0 in {', '.join('--' + k for k in names)}"
        for i, names in differ.items()) + "; start every process with the same flags but --process_id")
