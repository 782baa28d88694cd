"""A RabbitMQ node of the test run's own, for tests that stop, restart or reconfigure a broker.

It runs the installed ``rabbitmq-server`` as the current user with its own node name, ports,
data directory and Erlang cookie, so it never touches the shared broker of the other tests.
With ``tls=True`` it also listens for AMQPS with certificates from a throw-away CA generated on
the spot.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

from tests.harness import free_port

SERVER = Path('/usr/lib/rabbitmq/bin/rabbitmq-server')
CTL = Path('/usr/lib/rabbitmq/bin/rabbitmqctl')


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(('127.0.0.1', port)) == 0


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(['openssl', *args], cwd=cwd, check=True, capture_output=True)


def make_certificates(directory: Path) -> dict[str, str]:
    """A CA, a server certificate for localhost / 127.0.0.1 and a client certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    _openssl(
        'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2',
        '-keyout', 'ca.key', '-out', 'ca.pem', '-subj', '/CN=cqrs-test-ca', cwd=directory,
    )  # fmt: skip
    (directory / 'server.ext').write_text(
        'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n'
    )
    (directory / 'client.ext').write_text('extendedKeyUsage=clientAuth\n')
    for name in ('server', 'client'):
        _openssl(
            'req', '-newkey', 'rsa:2048', '-nodes', '-keyout', f'{name}.key',
            '-out', f'{name}.csr', '-subj', f'/CN={"localhost" if name == "server" else "cqrs"}',
            cwd=directory,
        )  # fmt: skip
        _openssl(
            'x509', '-req', '-in', f'{name}.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key',
            '-CAcreateserial', '-days', '2', '-out', f'{name}.pem', '-extfile', f'{name}.ext',
            cwd=directory,
        )  # fmt: skip
    for path in directory.iterdir():
        path.chmod(0o644)
    return {
        'ca': str(directory / 'ca.pem'),
        'server_cert': str(directory / 'server.pem'),
        'server_key': str(directory / 'server.key'),
        'client_cert': str(directory / 'client.pem'),
        'client_key': str(directory / 'client.key'),
    }


class PrivateBroker:
    """Start, stop and administer a RabbitMQ node of this test run."""

    # Whether the node runs in a process group of its own (so it can be killed as a whole).
    own_process_group = False

    def __init__(self, base: Path, tls: bool = False) -> None:
        if not SERVER.exists():
            raise RuntimeError(f'{SERVER} is missing: install the rabbitmq-server package')
        self.base = base
        self.node = f'cqrs{uuid.uuid4().hex[:8]}@localhost'
        self.port = free_port()
        self.tls_port = free_port() if tls else None
        self.dist_port = free_port()
        self.certificates = make_certificates(base / 'tls') if tls else None
        self.process: subprocess.Popen | None = None
        base.mkdir(parents=True, exist_ok=True)
        lines = [f'listeners.tcp.default = {self.port}', 'loopback_users = none']
        if tls:
            lines += [
                f'listeners.ssl.default = {self.tls_port}',
                f'ssl_options.cacertfile = {self.certificates["ca"]}',
                f'ssl_options.certfile = {self.certificates["server_cert"]}',
                f'ssl_options.keyfile = {self.certificates["server_key"]}',
                'ssl_options.verify = verify_peer',
                'ssl_options.fail_if_no_peer_cert = false',
            ]
        (base / 'rabbitmq.conf').write_text('\n'.join(lines) + '\n')
        self.env = {
            **os.environ,
            'HOME': str(base),
            'RABBITMQ_NODENAME': self.node,
            'RABBITMQ_NODE_PORT': str(self.port),
            'RABBITMQ_DIST_PORT': str(self.dist_port),
            'RABBITMQ_CONFIG_FILE': str(base / 'rabbitmq'),
            'RABBITMQ_MNESIA_BASE': str(base / 'mnesia'),
            'RABBITMQ_LOG_BASE': str(base / 'log'),
            'RABBITMQ_ENABLED_PLUGINS_FILE': str(base / 'enabled_plugins'),
            'RABBITMQ_PID_FILE': str(base / 'rabbitmq.pid'),
        }

    @property
    def url(self) -> str:
        return f'amqp://guest:guest@127.0.0.1:{self.port}/%2F'

    def ctl(self, *args: str, timeout: float = 120) -> str:
        """Run ``rabbitmqctl`` against this node and return its output."""
        result = subprocess.run(
            [str(CTL), '-q', '-n', self.node, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode:
            raise RuntimeError(f'rabbitmqctl {" ".join(args)} failed: {result.stderr.strip()}')
        return result.stdout

    def start(self) -> PrivateBroker:
        log = (self.base / 'server.log').open('a')
        self.process = subprocess.Popen(
            [str(SERVER)],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=self.own_process_group,
        )
        deadline = time.monotonic() + 180
        while True:
            try:
                self.ctl('await_startup', timeout=180)
                break
            except RuntimeError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log_text = (self.base / 'server.log').read_text()[-3000:]
                    raise RuntimeError(f'RabbitMQ node {self.node} did not start:\n{log_text}')
                time.sleep(0.5)
        self._wait_port(self.port, True)
        return self

    def stop_app(self) -> None:
        """Stop the broker application (clients are disconnected; the port closes)."""
        self.ctl('stop_app')
        self._wait_port(self.port, False)

    def start_app(self) -> None:
        self.ctl('start_app')
        self.ctl('await_startup')
        self._wait_port(self.port, True)

    def add_vhost(self, vhost: str) -> None:
        self.ctl('add_vhost', vhost)
        self.ctl('set_permissions', '-p', vhost, 'guest', '.*', '.*', '.*')

    def connection_count(self) -> int:
        return len([line for line in self.ctl('list_connections', 'pid').splitlines() if line])

    def stop(self) -> None:
        if self.process is None:
            return
        try:
            self.ctl('stop', timeout=60)
        except Exception:
            self.process.kill()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.process = None
        shutil.rmtree(self.base / 'mnesia', ignore_errors=True)

    @staticmethod
    def _wait_port(port: int, is_open: bool, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while port_open(port) != is_open:
            if time.monotonic() > deadline:
                raise RuntimeError(f'port {port} did not {"open" if is_open else "close"}')
            time.sleep(0.1)
