package cli

import (
	"fmt"
	"net"
	"net/url"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/pgshield/pgshield/internal/config"
)

// ConnInfo is how a client reaches the server.
type ConnInfo struct {
	Host        string `json:"host"`
	Port        string `json:"port"`
	User        string `json:"user"`
	Database    string `json:"database"`
	SSLMode     string `json:"sslmode"`
	SSLRootCert string `json:"sslrootcert,omitempty"`
	URI         string `json:"uri"`
	PSQL        string `json:"psql"`
}

func connInfo(cfg *config.Config, l config.Layout, user, db string) ConnInfo {
	host, port, _ := net.SplitHostPort(cfg.Listen)
	switch host {
	case "", "127.0.0.1", "::1", "0.0.0.0", "::":
		host = "localhost" // in the certificate's SANs
	}
	ci := ConnInfo{Host: host, Port: port, User: user, Database: db, SSLMode: "verify-full", SSLRootCert: cfg.CAFile}
	if ci.SSLRootCert == "" {
		ci.SSLRootCert = "system" // a user-supplied certificate from a public CA
	}
	q := url.Values{"sslmode": {ci.SSLMode}, "sslrootcert": {ci.SSLRootCert}}
	u := url.URL{Scheme: "postgresql", User: url.User(user), Host: net.JoinHostPort(host, port), Path: "/" + db, RawQuery: q.Encode()}
	ci.URI = u.String()
	ci.PSQL = fmt.Sprintf(`psql "host=%s port=%s user=%s dbname=%s sslmode=%s sslrootcert=%s"`,
		host, port, user, db, ci.SSLMode, ci.SSLRootCert)
	return ci
}

func newConnectionString(g *globals) *cobra.Command {
	var user, db string
	cmd := &cobra.Command{
		Use:   "connection-string",
		Short: "Print how to connect (psql line, URI, CA file for sslrootcert)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l := g.layout()
			cfg, err := config.Load(l)
			if err != nil {
				return err
			}
			if user == "" {
				user = cfg.AdminUser
			}
			ci := connInfo(cfg, l, user, db)
			return emit(cmd.OutOrStdout(), g, ci, func(tw *tabwriter.Writer) {
				fmt.Fprintf(tw, "psql\t%s\n", ci.PSQL)
				fmt.Fprintf(tw, "uri\t%s\n", ci.URI)
				fmt.Fprintf(tw, "sslrootcert\t%s\n", ci.SSLRootCert)
			})
		},
	}
	cmd.Flags().StringVar(&user, "user", "", "role to connect as (default: the administrator)")
	cmd.Flags().StringVar(&db, "database", "postgres", "database to connect to")
	return cmd
}
