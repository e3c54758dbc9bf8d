package cli

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/pgshield/pgshield/internal/apitype"
)

func newCertificate(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "certificate", Short: "The gateway's TLS certificate: show, rotate live, CA rollover"}
	show := &cobra.Command{Use: "show", Short: "Subject, names, issuer, validity and fingerprint of the certificate in force, and the CA bundle", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			info, err := g.client().Certificate(cmd.Context())
			if err != nil {
				return err
			}
			return emitCertificate(cmd, g, info)
		}}
	var req apitype.CertificateRotateRequest
	rotate := &cobra.Command{Use: "rotate", Args: cobra.NoArgs,
		Short: "Replace the certificate live: a new key and certificate from pgshield's CA, the user's --cert/--key, or --ca to start a CA rollover",
		Long: `Replace the gateway's certificate; new connections get it at once, open sessions keep theirs.

  pgshield certificate rotate                    new key and certificate from pgshield's own CA
  pgshield certificate rotate --cert F --key F [--ca-file F]
                                                 use your files (the key 0600 in a 0700 directory);
                                                 SIGHUP reloads them after a renewal in place
  pgshield certificate rotate --ca               start a CA rollover: a new CA, ca.crt holds old and new
  pgshield certificate rollover finish           end it: the new CA issues, the old one is dropped`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if (req.CertFile == "") != (req.KeyFile == "") {
				return usageError{errors.New("--cert and --key go together")}
			}
			if req.CA && req.CertFile != "" {
				return usageError{errors.New("--ca starts a rollover of pgshield's own CA; it takes no --cert or --key")}
			}
			if req.CAFile != "" && req.CertFile == "" {
				return usageError{errors.New("--ca-file goes with --cert and --key")}
			}
			if err := requireRoot(); err != nil {
				return err
			}
			// The daemon reads the files: it needs paths that do not
			// depend on this shell's directory.
			for _, p := range []*string{&req.CertFile, &req.KeyFile, &req.CAFile} {
				if *p != "" {
					abs, err := filepath.Abs(*p)
					if err != nil {
						return err
					}
					*p = abs
				}
			}
			info, err := g.client().RotateCertificate(cmd.Context(), req)
			if err != nil {
				return err
			}
			return emitCertificate(cmd, g, info)
		}}
	rotate.Flags().StringVar(&req.CertFile, "cert", "", "PEM certificate chain to use (leaf first)")
	rotate.Flags().StringVar(&req.KeyFile, "key", "", "PEM private key of --cert (mode 0600 in a 0700 directory)")
	rotate.Flags().StringVar(&req.CAFile, "ca-file", "", "CA bundle clients verify --cert with (connection-string names it; default: the system's roots)")
	rotate.Flags().BoolVar(&req.CA, "ca", false, "start a CA rollover of pgshield's own CA")
	rollover := &cobra.Command{Use: "rollover", Short: "CA rollover (started by certificate rotate --ca)"}
	finish := &cobra.Command{Use: "finish", Short: "End the transition: the new CA issues the certificate, ca.crt drops the old CA", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := requireRoot(); err != nil {
				return err
			}
			info, err := g.client().FinishCARollover(cmd.Context())
			if err != nil {
				return err
			}
			return emitCertificate(cmd, g, info)
		}}
	rollover.AddCommand(finish)
	cmd.AddCommand(show, rotate, rollover)
	return cmd
}

func emitCertificate(cmd *cobra.Command, g *globals, info *apitype.CertificateInfo) error {
	return emit(cmd.OutOrStdout(), g, info, func(tw *tabwriter.Writer) {
		fmt.Fprintf(tw, "source\t%s\n", info.Source)
		fmt.Fprintf(tw, "certificate file\t%s\n", info.CertFile)
		fmt.Fprintf(tw, "key file\t%s\n", info.KeyFile)
		ca := info.CAFile
		if ca == "" {
			ca = "system roots"
		}
		fmt.Fprintf(tw, "CA file\t%s\n", ca)
		s := info.Server
		fmt.Fprintf(tw, "subject\t%s\n", shown(s.Subject))
		fmt.Fprintf(tw, "names\t%s\n", shown(strings.Join(append(append([]string{}, s.DNSNames...), s.IPAddresses...), ", ")))
		fmt.Fprintf(tw, "issuer\t%s\n", shown(s.Issuer))
		fmt.Fprintf(tw, "not before\t%s\n", fmtTime(&s.NotBefore))
		fmt.Fprintf(tw, "not after\t%s\n", fmtTime(&s.NotAfter))
		fmt.Fprintf(tw, "sha256\t%s\n", s.SHA256)
		if info.RenewAt != nil {
			fmt.Fprintf(tw, "renews at\t%s\n", fmtTime(info.RenewAt))
		}
		if info.Source == apitype.CertOwnCA {
			fmt.Fprintf(tw, "CA rollover\t%v\n", map[bool]string{true: "in transition (finish: pgshield certificate rollover finish)", false: "none"}[info.Rollover])
		}
		for i, c := range info.CABundle {
			fmt.Fprintf(tw, "CA %d\t%s, until %s, sha256 %s\n", i+1, shown(c.Subject), fmtTime(&c.NotAfter), c.SHA256)
		}
	})
}
