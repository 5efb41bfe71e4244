#!/bin/sh
# Checks popek-usernet against a real Linux network stack: the `tap` example bridges a TAP
# device to a UserNet, and the TAP device is moved into a network namespace, whose kernel and
# busybox tools play the guest (udhcpc, ping, nslookup, wget, nc, httpd). All traffic stays on
# this machine: the namespace's only link is the TAP device, and NAT goes to 127.0.0.1.
#
# Needs root, busybox and python3. Build first:
#   cargo build --release -p popek-usernet --example tap
# Then: crates/popek-usernet/examples/tap-netns-check.sh   (from the workspace root)
set -eu

BIN=${BIN:-target/release/examples/tap}
NS=popek-usernet-check
TAP=pkuser0
WORK=$(mktemp -d)
PIDS=""

cleanup() {
    for p in $PIDS; do kill "$p" 2>/dev/null || true; done
    for p in $(ip netns pids "$NS" 2>/dev/null); do kill "$p" 2>/dev/null || true; done
    ip netns del "$NS" 2>/dev/null || true
    rm -rf "$WORK" "/etc/netns/$NS"
}
trap cleanup EXIT INT TERM

fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }
# (Not for background jobs: `$!` would be a subshell's pid, and kill would miss the program.)
in_ns() { ip netns exec "$NS" "$@"; }

ip netns add "$NS"
mkdir -p "/etc/netns/$NS"
echo "nameserver 10.0.2.3" > "/etc/netns/$NS/resolv.conf"

"$BIN" "$TAP" 18080:80 2>"$WORK/tap.log" &
PIDS="$PIDS $!"
for _ in $(seq 50); do ip link show "$TAP" >/dev/null 2>&1 && break; sleep 0.1; done
ip link set "$TAP" netns "$NS"
in_ns ip link set lo up
in_ns ip link set "$TAP" address 52:54:00:12:34:56 up

# 1. DHCP with busybox udhcpc; the script records the lease and applies it.
cat > "$WORK/udhcpc.sh" <<'EOF'
#!/bin/sh
[ "$1" = bound ] || exit 0
env | grep -E '^(ip|mask|subnet|router|dns|lease|serverid)=' | sort > "$LEASE_FILE"
ip addr add "$ip/$mask" dev "$interface"
ip route add default via "$router"
EOF
chmod +x "$WORK/udhcpc.sh"
LEASE_FILE="$WORK/lease" in_ns busybox udhcpc -i "$TAP" -f -q -n -t 5 -T 1 -s "$WORK/udhcpc.sh" >"$WORK/udhcpc.log" 2>&1 \
    || { cat "$WORK/udhcpc.log"; fail "udhcpc got no lease"; }
grep -qx 'ip=10.0.2.15' "$WORK/lease" || fail "lease: $(cat "$WORK/lease")"
grep -qx 'router=10.0.2.2' "$WORK/lease" || fail "router: $(cat "$WORK/lease")"
grep -qx 'dns=10.0.2.3' "$WORK/lease" || fail "dns: $(cat "$WORK/lease")"
grep -qx 'lease=86400' "$WORK/lease" || fail "lease time: $(cat "$WORK/lease")"
ok "udhcpc lease: $(tr '\n' ' ' < "$WORK/lease")"

# 2. ICMP echo to the gateway.
in_ns busybox ping -c 2 -W 2 10.0.2.2 >/dev/null || fail "ping 10.0.2.2"
ok "ping 10.0.2.2"

# 3. DNS through 10.0.2.3 (names from the host's /etc/hosts).
in_ns busybox nslookup localhost 10.0.2.3 > "$WORK/ns.log" 2>&1 || true
grep -q '127.0.0.1' "$WORK/ns.log" || { cat "$WORK/ns.log"; fail "nslookup localhost"; }
ok "nslookup localhost via 10.0.2.3"

# 4. Outbound TCP: a host HTTP server on 127.0.0.1, fetched from the guest at 10.0.2.2.
mkdir -p "$WORK/www"
head -c 8388608 /dev/urandom > "$WORK/www/big"
echo "hello from the host" > "$WORK/www/hello.txt"
busybox httpd -f -p 127.0.0.1:18000 -h "$WORK/www" &
PIDS="$PIDS $!"
sleep 0.3
in_ns busybox wget -q -O "$WORK/got" http://10.0.2.2:18000/big || fail "wget big"
cmp -s "$WORK/got" "$WORK/www/big" || fail "8 MiB download differs"
ok "wget 8 MiB from the host through 10.0.2.2"

# 4b. Outbound TCP upload with half-close: the guest sends 8 MiB then FIN; the host answers
# with the digest after its EOF, then closes.
python3 - 127.0.0.1 18002 <<'EOF' &
import hashlib, socket, sys
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind((sys.argv[1], int(sys.argv[2])))
l.listen(1)
c, _ = l.accept()
h = hashlib.sha256()
while True:
    d = c.recv(65536)
    if not d:
        break
    h.update(d)
c.sendall(h.hexdigest().encode())
c.close()
EOF
PIDS="$PIDS $!"
sleep 0.3
digest=$(in_ns python3 -c '
import socket, sys
s = socket.create_connection(("10.0.2.2", 18002), timeout=30)
s.sendall(open(sys.argv[1], "rb").read())
s.shutdown(socket.SHUT_WR)
b = b""
while True:
    d = s.recv(4096)
    if not d:
        break
    b += d
print(b.decode())' "$WORK/www/big" || true)
[ "$digest" = "$(sha256sum < "$WORK/www/big" | cut -d" " -f1)" ] || fail "upload digest '$digest'"
ok "8 MiB upload to the host with half-close, digest matches"

# 5. Outbound UDP: an echo server on the host's 127.0.0.1.
python3 - 127.0.0.1 18001 <<'EOF' &
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
while True:
    d, a = s.recvfrom(2048)
    s.sendto(d[::-1], a)
EOF
PIDS="$PIDS $!"
sleep 0.3
reply=$(in_ns python3 -c '
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.sendto(b"usernet", ("10.0.2.2", 18001))
print(s.recvfrom(2048)[0].decode())' || true)
[ "$reply" = "tenresu" ] || fail "UDP echo got '$reply'"
ok "UDP echo through 10.0.2.2"

# 6. --publish 18080:80: a server in the guest, reached from the host.
mkdir -p "$WORK/guestwww"
echo "hello from the guest" > "$WORK/guestwww/index.html"
ip netns exec "$NS" busybox httpd -f -p 80 -h "$WORK/guestwww" &
PIDS="$PIDS $!"
sleep 0.3
got=$(curl -s --max-time 10 http://127.0.0.1:18080/index.html || true)
[ "$got" = "hello from the guest" ] || fail "publish got '$got'"
ok "--publish 18080:80 reaches the guest's httpd"

# 7. systemd-networkd's DHCP client, when installed. It runs in a private mount namespace
# with its own config and state, and a read-only /sys so it doesn't wait for udev.
ND=/lib/systemd/systemd-networkd
if [ -x "$ND" ] && id systemd-network >/dev/null 2>&1; then
    in_ns ip addr flush dev "$TAP"
    cat > "$WORK/nd.sh" <<EOF
mount -t tmpfs tmpfs /etc/systemd/network
mount -t tmpfs tmpfs /run/systemd
mount -o remount,bind,ro /sys || mount -o remount,ro /sys
mkdir -p /run/systemd/netif/links /run/systemd/netif/leases /run/systemd/netif/lldp
chown -R systemd-network:systemd-network /run/systemd/netif
printf '[Match]\nName=$TAP\n[Network]\nDHCP=ipv4\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n' \
    > /etc/systemd/network/10-usernet.network
SYSTEMD_LOG_LEVEL=debug SYSTEMD_LOG_TARGET=console exec $ND
EOF
    ip netns exec "$NS" unshare -m sh "$WORK/nd.sh" > "$WORK/networkd.log" 2>&1 &
    PIDS="$PIDS $!"
    for _ in $(seq 40); do
        in_ns ip -4 addr show dev "$TAP" | grep -q 'inet 10.0.2.15/24' && break
        sleep 0.5
    done
    in_ns ip -4 addr show dev "$TAP" | grep -q 'inet 10.0.2.15/24' \
        || { tail -30 "$WORK/networkd.log"; fail "systemd-networkd got no lease"; }
    in_ns ip -4 route | grep -q '^default via 10.0.2.2' || fail "networkd: no default route"
    in_ns busybox wget -q -O - http://10.0.2.2:18000/hello.txt | grep -q 'hello from the host' \
        || fail "wget after the networkd lease"
    ok "systemd-networkd lease 10.0.2.15/24 via 10.0.2.2, and traffic"
else
    echo "skipped: systemd-networkd not installed"
fi

echo "all checks passed"
