// Command oidcissuer serves a test OIDC issuer over HTTPS on loopback for the
// benchmarks: it writes the issuer's CA certificate and one access token to
// files, prints the issuer URL, and serves until it is signalled.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/pgshield/pgshield/internal/testutil/oidcissuer"
)

func main() {
	dir := flag.String("dir", "", "directory for oidc-ca.pem and token (0600)")
	oid := flag.String("object-id", "bench-oid", "object ID (oid claim) of the token")
	aud := flag.String("audience", "api://pgshield-bench", "audience of the token")
	ttl := flag.Duration("ttl", 2*time.Hour, "token lifetime")
	flag.Parse()
	if *dir == "" {
		fmt.Fprintln(os.Stderr, "oidcissuer: --dir is required")
		os.Exit(2)
	}
	is, err := oidcissuer.New()
	if err != nil {
		fmt.Fprintln(os.Stderr, "oidcissuer:", err)
		os.Exit(1)
	}
	defer is.Close()
	if _, err := is.WriteCA(*dir); err != nil {
		fmt.Fprintln(os.Stderr, "oidcissuer:", err)
		os.Exit(1)
	}
	tok, err := oidcissuer.Sign(is.Key(jose.RS256), "", is.Access(*aud, *oid, *ttl))
	if err == nil {
		err = os.WriteFile(*dir+"/token", []byte(tok), 0o600)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "oidcissuer:", err)
		os.Exit(1)
	}
	fmt.Println(is.URL)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
}
