#!/usr/bin/env bash
# Install what logwarden's demo and tests (with --bench: the benchmarks) need from Debian's
# packages, only when missing.
set -euo pipefail
need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
[ -e /usr/lib/nginx/modules/ngx_http_cache_purge_module.so ] || need+=(libnginx-mod-http-cache-purge)
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
command -v openssl >/dev/null 2>&1 || need+=(openssl)   # the tests make a CA for https peers
[ -x /usr/sbin/logrotate ] || need+=(logrotate)   # examples/logrotate.conf is tested with it
# promtool (Debian package prometheus, ~100 MB, starts a Prometheus service) is not
# installed here; the tests of the rules and the dashboard skip without it.
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)   # bus tests, make demo-bus
# the edge tier in front of the cluster (tests/test_edge.py): a Varnish cache, HAProxy round robin
command -v varnishd >/dev/null 2>&1 || [ -x /usr/sbin/varnishd ] || need+=(varnish)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
if [ "${1:-}" = --bench ]; then   # the references make bench runs beside logwarden
    command -v mtail >/dev/null 2>&1 || need+=(mtail)
    command -v wrk >/dev/null 2>&1 || need+=(wrk)
    command -v taskset >/dev/null 2>&1 || need+=(util-linux)
fi
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "missing Debian packages: ${need[*]}" >&2
    echo "install them with: sudo apt-get install ${need[*]}" >&2
    exit 1
fi
echo "installing ${need[*]} with apt-get"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
