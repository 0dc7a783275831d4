"""A forward-proxy Apache Traffic Server of our own, for bench.forward: one event thread, no
cache, no logs, its configuration and state in a runroot under a directory of the bench's."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ATS_RECORDS = """\
CONFIG proxy.config.admin.user_id STRING trafficserver
CONFIG proxy.config.exec_thread.autoconfig INT 0
CONFIG proxy.config.exec_thread.limit INT 1
CONFIG proxy.config.accept_threads INT 0
CONFIG proxy.config.task_threads INT 1
CONFIG proxy.config.http.server_ports STRING {port}
CONFIG proxy.config.url_remap.remap_required INT 0
CONFIG proxy.config.reverse_proxy.enabled INT 0
CONFIG proxy.config.http.cache.http INT 0
CONFIG proxy.config.cache.ram_cache.size INT 0
CONFIG proxy.config.http.insert_request_via_str INT 1
CONFIG proxy.config.http.insert_response_via_str INT 0
CONFIG proxy.config.http.insert_client_ip INT 0
CONFIG proxy.config.http.insert_squid_x_forwarded_for INT 0
CONFIG proxy.config.log.logging_enabled INT 0
CONFIG proxy.config.http.keep_alive_no_activity_timeout_in INT 120
CONFIG proxy.config.http.keep_alive_no_activity_timeout_out INT 120
"""


def ats_argv(rundir: Path, port: int) -> list[str]:
    """A forward-proxy Apache Traffic Server of our own: a runroot under
    *rundir* (binaries linked from the system's, configuration and state
    here), one event thread, no cache, no logs."""
    root = rundir / "ats"
    subprocess.run(["traffic_layout", "init", "--path", str(root)], check=True, capture_output=True, timeout=120)
    dirs = {name: root / name for name in ("etc", "var", "run", "cache", "log")}
    for path in dirs.values():
        path.mkdir(exist_ok=True)
    for conf in Path("/etc/trafficserver").iterdir():
        if conf.is_file():
            shutil.copy(conf, dirs["etc"] / conf.name)
    (dirs["etc"] / "records.config").write_text(ATS_RECORDS.format(port=port))
    (dirs["etc"] / "storage.config").write_text(f"{dirs['cache']} 64M\n")
    for name in ("remap.config", "plugin.config", "parent.config"):
        (dirs["etc"] / name).write_text("")
    places = {"sysconfdir": "etc", "datadir": "cache", "localstatedir": "var", "runtimedir": "run"}
    places |= {"logdir": "log", "cachedir": "cache"}
    lines = (root / "runroot.yaml").read_text().splitlines()
    lines = [f"{k}: {dirs[places[k]]}" if (k := line.split(":")[0]) in places else line for line in lines]
    (root / "runroot.yaml").write_text("\n".join(lines) + "\n")
    for name in ("var", "run", "cache", "log"):
        shutil.chown(dirs[name], "trafficserver")
    os.chmod(rundir, 0o755)
    return ["traffic_server", f"--run-root={root}"]
