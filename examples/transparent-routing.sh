#!/bin/sh
# Routing for `source = "client"` (README "Edge A/V without SNAT"), run as root on the tandem
# host (or inside its network namespace). Idempotent: running it twice adds nothing twice.
#
# What it sets up, and why:
# - Member replies are addressed to the client, not to tandem. The members' default route points
#   at tandem, so those replies arrive here as packets to forward. The iptables `socket` match
#   finds the transparent socket tandem opened for that connection and marks the packet;
#   a policy rule sends marked packets to a table whose only route delivers everything locally,
#   so the reply reaches tandem's socket instead of being forwarded to the client.
# - Forwarding on, reverse-path filtering off: the replies' source (the member) and tandem's
#   transparent socket (bound to the client's address) look spoofed to a strict rp_filter.
#
# Usage: transparent-routing.sh [-m MARK] [-t TABLE] [-i IFACE]
#   MARK   firewall mark for replies to transparent sockets (default 1)
#   TABLE  routing table that delivers marked packets locally (default 100)
#   IFACE  member-facing interface whose rp_filter is turned off (default: all interfaces)
# Environment: IPTABLES (default iptables; iptables-legacy where the nft backend lacks the
# socket match), IP6TABLES likewise for IPv6 (set IPV6=1 to set up IPv6 too).
set -eu

MARK=1
TABLE=100
IFACE=
while getopts m:t:i: opt; do
    case $opt in
        m) MARK=$OPTARG ;;
        t) TABLE=$OPTARG ;;
        i) IFACE=$OPTARG ;;
        *) echo "usage: $0 [-m MARK] [-t TABLE] [-i IFACE]" >&2; exit 2 ;;
    esac
done
IPTABLES=${IPTABLES:-iptables}
IP6TABLES=${IP6TABLES:-ip6tables}

rule() { # rule IPT ARGS...: append the mangle rule unless it is there already
    ipt=$1; shift
    "$ipt" -t mangle -C PREROUTING "$@" 2>/dev/null || "$ipt" -t mangle -A PREROUTING "$@"
}

for proto in tcp udp; do
    rule "$IPTABLES" -p "$proto" -m socket --transparent -j MARK --set-mark "$MARK"
done
ip rule show | grep -q "fwmark $(printf '0x%x' "$MARK") lookup $TABLE" \
    || ip rule add fwmark "$MARK" lookup "$TABLE"
ip route replace local 0.0.0.0/0 dev lo table "$TABLE"

echo 1 > /proc/sys/net/ipv4/ip_forward
# The effective rp_filter of an interface is the higher of `all` and its own.
echo 0 > /proc/sys/net/ipv4/conf/all/rp_filter
if [ -n "$IFACE" ]; then
    echo 0 > "/proc/sys/net/ipv4/conf/$IFACE/rp_filter"
else
    for f in /proc/sys/net/ipv4/conf/*/rp_filter; do echo 0 > "$f"; done
fi

if [ "${IPV6:-0}" = 1 ]; then
    for proto in tcp udp; do
        rule "$IP6TABLES" -p "$proto" -m socket --transparent -j MARK --set-mark "$MARK"
    done
    ip -6 rule show | grep -q "fwmark $(printf '0x%x' "$MARK") lookup $TABLE" \
        || ip -6 rule add fwmark "$MARK" lookup "$TABLE"
    ip -6 route replace local ::/0 dev lo table "$TABLE"
    echo 1 > /proc/sys/net/ipv6/conf/all/forwarding
fi
