package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"github.com/pgshield/pgshield/internal/apitype"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgshield/pgshield/internal/audit"
)

// errAuditTampered is a verification failure: exit 1 with the problem named.
var errAuditTampered = errors.New("audit log verification failed")

func newAudit(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "audit", Short: "Read and verify the tamper-evident audit log"}
	show := func(cmd *cobra.Command, rs []audit.Record) error {
		if rs == nil {
			rs = []audit.Record{}
		}
		return emit(cmd.OutOrStdout(), g, rs, func(tw *tabwriter.Writer) {
			fmt.Fprintln(tw, "SEQ\tTIME\tEVENT\tOUTCOME\tCLIENT\tUSER\tRULE\tDETAIL")
			for _, r := range rs {
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Seq, r.Time.Local().Format(time.RFC3339), cell(r.Type),
					cell(r.Outcome), shown(r.Client), shown(r.User), shown(r.Rule), detail(r))
			}
		})
	}
	var n int
	var follow bool
	tail := &cobra.Command{Use: "tail", Short: "Show the newest records", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dir, err := auditDir(g)
			if err != nil {
				return err
			}
			rs, err := audit.Tail(dir, n)
			if err != nil {
				return err
			}
			if !follow {
				return show(cmd, rs)
			}
			return followAudit(cmd, g, dir, rs)
		}}
	tail.Flags().IntVarP(&n, "lines", "n", 20, "how many records")
	tail.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing records as they are written (until interrupted)")
	var since, user, event string
	var limit int
	search := &cobra.Command{Use: "search", Short: "Find records by time, user and event type", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dir, err := auditDir(g)
			if err != nil {
				return err
			}
			f := audit.Filter{User: user, Type: event, Limit: limit}
			if since != "" {
				t, err := parseSince(since)
				if err != nil {
					return usageError{err}
				}
				f.Since = t
			}
			rs, err := audit.Search(dir, f)
			if err != nil {
				return err
			}
			return show(cmd, rs)
		}}
	search.Flags().StringVar(&since, "since", "", "RFC 3339 time or a duration back from now (e.g. 1h)")
	search.Flags().StringVar(&user, "user", "", "PostgreSQL role")
	search.Flags().StringVar(&event, "event", "", "event type, e.g. auth.failure, connection.denied")
	search.Flags().IntVar(&limit, "limit", 0, "keep only the newest N matches")
	var cluster bool
	verify := &cobra.Command{Use: "verify", Short: "Check the hash chain: detects edited, deleted, reordered or truncated records", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dir, err := auditDir(g)
			if err != nil {
				return err
			}
			// The anchors first: a log read before them could end before a
			// head anchored meanwhile (a false alarm).
			var anchors []apitype.AuditAnchor
			if cluster {
				if anchors, err = g.client().AuditAnchors(cmd.Context()); err != nil {
					return err
				}
			}
			rep, err := audit.Verify(dir)
			if err != nil {
				return err
			}
			if cluster {
				return verifyCluster(cmd, g, dir, rep, anchors)
			}
			if err := emit(cmd.OutOrStdout(), g, rep, func(tw *tabwriter.Writer) {
				fmt.Fprintf(tw, "records\t%d\nintact\t%v\n", rep.Records, rep.OK)
				if rep.Problem != "" {
					fmt.Fprintf(tw, "problem\t%s\n", rep.Problem)
				}
				for _, n := range rep.Notes {
					fmt.Fprintf(tw, "note\t%s\n", n)
				}
				fmt.Fprintf(tw, "head\tseq %d %s\n", rep.HeadSeq, rep.Head)
			}); err != nil {
				return err
			}
			if !rep.OK {
				return fmt.Errorf("%w: %s", errAuditTampered, rep.Problem)
			}
			return nil
		}}
	verify.Flags().BoolVar(&cluster, "cluster", false, "also check this node's chain against the head the cluster anchored in etcd, and list every node's anchor")
	cmd.AddCommand(tail, search, verify)
	return cmd
}

// clusterVerify is audit verify --cluster's answer.
type clusterVerify struct {
	audit.Report
	Anchors []apitype.AuditAnchor `json:"anchors"`
	// AnchorOK: this node's chain holds the record its anchor names.
	AnchorOK      bool   `json:"anchor_ok"`
	AnchorProblem string `json:"anchor_problem,omitempty"`
}

// verifyCluster checks that this node's chain still holds the record its
// last anchor in etcd names, with the same hash: a log cut short or
// rewritten since no longer does.
func verifyCluster(cmd *cobra.Command, g *globals, dir string, rep audit.Report, anchors []apitype.AuditAnchor) error {
	res := clusterVerify{Report: rep, Anchors: anchors}
	var self *apitype.AuditAnchor
	for i := range anchors {
		if anchors[i].Self {
			self = &anchors[i]
		}
	}
	switch {
	case self == nil:
		res.AnchorProblem = "this node has no anchor in etcd yet"
	case !self.Authentic:
		res.AnchorProblem = "this node's anchor in etcd is not authentic (its MAC does not match)"
	case rep.HeadSeq < self.Seq:
		res.AnchorProblem = fmt.Sprintf("the log ends at seq %d, but seq %d was anchored at %s: records were removed", rep.HeadSeq, self.Seq, self.At.Format(time.RFC3339))
	default:
		rs, err := audit.Search(dir, audit.Filter{})
		if err != nil {
			return err
		}
		res.AnchorProblem = fmt.Sprintf("seq %d, anchored at %s, is not in the log", self.Seq, self.At.Format(time.RFC3339))
		for _, r := range rs {
			if r.Seq == self.Seq {
				if r.Hash == self.Hash {
					res.AnchorOK, res.AnchorProblem = true, ""
				} else {
					res.AnchorProblem = fmt.Sprintf("seq %d's hash is not the one anchored at %s: the log was rewritten", self.Seq, self.At.Format(time.RFC3339))
				}
			}
		}
	}
	if err := emit(cmd.OutOrStdout(), g, res, func(tw *tabwriter.Writer) {
		fmt.Fprintf(tw, "records\t%d\nintact\t%v\nhead\tseq %d %s\nanchored\t%v\n", rep.Records, rep.OK, rep.HeadSeq, rep.Head, res.AnchorOK)
		if rep.Problem != "" {
			fmt.Fprintf(tw, "problem\t%s\n", rep.Problem)
		}
		if res.AnchorProblem != "" {
			fmt.Fprintf(tw, "anchor problem\t%s\n", res.AnchorProblem)
		}
		fmt.Fprintln(tw, "NODE\tANCHORED SEQ\tAT\tAUTHENTIC")
		for _, a := range anchors {
			fmt.Fprintf(tw, "%s\t%d\t%s\t%v\n", cell(a.Node), a.Seq, a.At.Format(time.RFC3339), a.Authentic)
		}
	}); err != nil {
		return err
	}
	if !rep.OK {
		return fmt.Errorf("%w: %s", errAuditTampered, rep.Problem)
	}
	if !res.AnchorOK {
		return fmt.Errorf("%w: %s", errAuditTampered, res.AnchorProblem)
	}
	return nil
}

// followAudit prints rs, then every record written after them, one line
// (or, with -o json, one JSON object) each, until interrupted.
func followAudit(cmd *cobra.Command, g *globals, dir string, rs []audit.Record) error {
	out := cmd.OutOrStdout()
	print := func(r audit.Record) error {
		if g.output == "json" {
			return json.NewEncoder(out).Encode(r)
		}
		_, err := fmt.Fprintf(out, "%d  %s  %s  %s  %s  %s  %s  %s\n", r.Seq, r.Time.Local().Format(time.RFC3339), cell(r.Type),
			shown(r.Outcome), shown(r.Client), shown(r.User), shown(r.Rule), detail(r))
		return err
	}
	var last uint64
	if len(rs) == 0 { // -n 0: from the newest record on
		if head, err := audit.Tail(dir, 1); err == nil && len(head) == 1 {
			last = head[0].Seq
		}
	}
	for _, r := range rs {
		if err := print(r); err != nil {
			return err
		}
		last = r.Seq
	}
	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return audit.Follow(ctx, dir, last, print)
}

// auditDir is the audit log on the encrypted volume or, for a server whose
// daemon has not yet moved it there, the old one in the data directory.
// Reading it takes root, like every file under the data directory.
func auditDir(g *globals) (string, error) {
	if err := requireRoot(); err != nil {
		return "", err
	}
	l := g.layout()
	if _, err := os.Stat(l.AuditDir()); err == nil {
		return l.AuditDir(), nil
	}
	if _, err := os.Stat(filepath.Join(l.LegacyAuditDir(), "audit.jsonl")); err == nil {
		return l.LegacyAuditDir(), nil
	}
	return "", fmt.Errorf("no audit log in %s: the encrypted volume must be mounted and unlocked to read it (pgshield key unlock)", l.AuditDir())
}

func parseSince(s string) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil && d > 0 {
		return time.Now().Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("invalid --since %q: use RFC 3339 or a duration such as 1h", s)
	}
	return t, nil
}

func detail(r audit.Record) string {
	parts := []string{}
	if r.Database != "" {
		parts = append(parts, "db="+shown(r.Database))
	}
	if r.Reason != "" {
		parts = append(parts, cell(r.Reason))
	}
	keys := make([]string, 0, len(r.Fields))
	for k := range r.Fields {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		b, _ := json.Marshal(r.Fields[k])
		// JSON escapes C0 controls but not DEL, C1 or bidi controls.
		parts = append(parts, cell(k)+"="+cell(string(b)))
	}
	return strings.Join(parts, " ")
}
