// Package nft enforces the gateway's inbound allow-list in the kernel with
// nftables, as defence in depth behind the gateway's own checks: a SYN from
// an address that is not allowed is dropped before it reaches the listener.
//
// Apply installs one inet table of its own, replacing it whole in a single
// netlink transaction, so packets meet either the old rules or the new ones
// and never an empty table; Remove deletes it. Other tables are not touched,
// and since an accept in one table does not override a drop in another,
// pgshield's table can only narrow what the host's firewall lets through.
//
// The table looks like this, in nft syntax:
//
//	table inet pgshield {
//		set allow4 { type ipv4_addr; flags interval; elements = { ... } }
//		set allow6 { type ipv6_addr; flags interval; elements = { ... } }
//		chain input {
//			type filter hook input priority filter; policy accept;
//			meta nfproto ipv4 tcp dport 5432 ip saddr @allow4 accept
//			meta nfproto ipv6 tcp dport 5432 ip6 saddr @allow6 accept
//			tcp dport 5432 counter drop
//		}
//	}
//
// The package needs Linux and CAP_NET_ADMIN in the target network namespace;
// elsewhere Apply and Remove return errors.ErrUnsupported.
package nft
