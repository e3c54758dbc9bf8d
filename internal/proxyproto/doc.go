// Package proxyproto reads the HAProxy PROXY protocol header (versions 1 and
// 2) that a trusted load balancer sends before the PostgreSQL bytes, and holds
// the list of peers trusted to send one.
//
// The specification is
// https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt. ReadHeader
// reads exactly the bytes of the header and never more, so it can work on a
// net.Conn directly: the startup packet that follows stays in the socket for
// the next reader. Everything it reads is bounded before anything is
// allocated.
//
// A header is only believed from a peer in a Trusted list; the receiver must
// never guess whether a header is present (spec section 2), so a listener
// either requires one from its trusted peers or accepts none.
package proxyproto
