from setuptools import find_packages, setup

with open("gconnect/__init__.py", encoding="utf-8") as f:
    version = next(line.split('"')[1] for line in f if line.startswith("__version__"))

setup(
    name="gconnect",
    version=version,
    description="A high-concurrency HTTP CONNECT tunnelling proxy built on gevent",
    long_description=open("README.rst", encoding="utf-8").read(),
    long_description_content_type="text/x-rst",
    license="MIT",
    packages=find_packages(include=["gconnect", "gconnect.*"]),
    python_requires=">=3.10",
    install_requires=[
        "gevent>=23.9",
        "dnspython>=2.4",
        "click>=8.1",
        # llhttp's strict HTTP/1.1 tokenizer: ~10x faster than h11 on a CONNECT head.
        "httptools>=0.6",
        # tomllib is in the standard library from 3.11; the same parser before.
        'tomli>=1.1; python_version < "3.11"',
        # --auth-file: bcrypt checks (4.0: the Rust build that releases the GIL,
        # so checks can run in gevent's thread pool).
        "bcrypt>=4.0",
        # --allow-host/--deny-host: UTS-46 mapping of internationalised names to
        # A-labels, one spelling for rules and requests (3.7 fixed CVE-2024-3651,
        # a quadratic-time encode); maintained, released 2025.
        "idna>=3.7",
        # HTTP/2 on the TLS listener (Chromium opens its tunnels as streams of one
        # connection): python-hyper's sans-I/O state machine, maintained (4.4.x).
        # 4.4.0 is the first release that accepts a CONNECT without :scheme and :path.
        # Not an extra: the TLS listener offers h2 to every client, and Chromium takes it.
        "h2>=4.4.0",
    ],
    extras_require={
        "test": [
            "pytest>=7.4",
            "pytest-timeout>=2.2",
            "trustme>=1.1",
            "h11>=0.14",
            "hypothesis>=6.80",
            "urllib3>=2.0",
            "httpx>=0.25",
            "locust>=2.20",
            "ruff>=0.4",
            "mypy>=1.8",
            "prometheus-client>=0.16",
            # Parses our Proxy-Status headers (RFC 8941) in the tests: a parser we did not write.
            "http-sfv>=0.9.9",
            # The JWT provider's tests sign tokens with it (and RSA/EC keys through cryptography).
            "PyJWT[crypto]>=2.10.1",
            'tomli>=1.1; python_version < "3.11"',
        ],
        # Only --metrics-listen imports it: the proxy's runtime set stays six packages.
        "metrics": ["prometheus-client>=0.16"],
        # Only --auth-jwks imports it. 2.10.1 fixed CVE-2024-53861 (2.10.0 compared
        # the issuer as a substring); [crypto] brings cryptography for RS/PS/ES/EdDSA.
        # Maintained: 2.15.1 was released 2026-09.
        "jwt": ["PyJWT[crypto]>=2.10.1"],
        "bench": ["matplotlib>=3.7", "locust>=2.20", "psutil>=5.9"],
    },
    entry_points={"console_scripts": ["gconnect=gconnect.__main__:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Operating System :: POSIX :: Linux",
        "Topic :: Internet :: Proxy Servers",
    ],
)
