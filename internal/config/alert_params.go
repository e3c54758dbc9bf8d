package config

import (
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/pgshield/pgshield/internal/alerting"
)

// alertParams are the pgshield.alert_* parameters (internal/ctl/alerts,
// README "Alerts and decoys"). They join the table at init, in a file of
// their own, so that the alert controller's parameters are one place.
var alertParams = []Param{
	{Name: "pgshield.alert_bruteforce_failures", Default: "5", Check: checkFailures,
		Description: "Failed logins from one source (IPv6: per /64) within pgshield.alert_window that raise a brute-force alert (valid or invalid users); as many before a success raise the successful brute force alert. 0 turns them off."},
	{Name: "pgshield.alert_bruteforce_role_failures", Default: "20", Check: checkFailures,
		Description: "Failed logins for one existing role within pgshield.alert_window, from all sources, that raise a distributed brute-force alert; 0 turns it off."},
	{Name: "pgshield.alert_window", Default: "10m0s", Check: checkDuration,
		Description: "Sliding window in which failed logins are counted for alerts."},
	{Name: "pgshield.alert_principal_unseen_days", Default: "60", Check: checkAlertDays,
		Description: "A role or token principal that has not logged in for this many days raises an alert when it does; 0 turns it off."},
	{Name: "pgshield.alert_source_unseen_days", Default: "60", Check: checkAlertDays,
		Description: "A login from a source prefix (IPv4 /24, IPv6 /48) the role has not logged in from for this many days raises an alert; 0 turns it off."},
	{Name: "pgshield.alert_learning_period", Default: "168h0m0s", Check: checkLearning,
		Description: "How long logins are learned before a role or source prefix never seen at all raises a not-seen alert (0s: from the first login)."},
	{Name: "pgshield.alert_harmful_applications", Default: DefaultHarmfulApplications, Check: checkToolList,
		Description: "Comma-separated application names of attack tools: a login or attempt whose application_name holds one (a word; with punctuation, a substring; any case) raises a High alert."},
	{Name: "pgshield.alert_harmful_fingerprints", Default: alerting.DefaultHarmfulFingerprints, Check: checkFingerprints,
		Description: "Semicolon-separated startup packet shapes that mark an attack tool even without an application_name: [NAME:]KEY[=VALUE],... with the keys in the order sent (values only for user, database, application_name, client_encoding); the default holds nmap's and ncrack's (README \"Alerts and decoys\"); empty: none."},
	{Name: "pgshield.alert_webhook_url", Default: "", Check: checkWebhookURL,
		Description: "https:// URL every new alert is POSTed to as JSON (retried with backoff, never delaying a login); empty turns it off."},
	{Name: "pgshield.alert_webhook_ca_file", Default: "", Check: checkCAFile,
		Description: "PEM file of CA certificates trusted for the webhook's HTTPS, in addition to the system's."},
}

// DefaultHarmfulApplications are attack tools that name themselves in
// application_name or can be made to.
const DefaultHarmfulApplications = "brutus,crackmapexec,hydra,medusa,metasploit,msf,ncrack,nmap,nuclei,patator,pgsql-brute,sqlmap,sqlninja,thc-hydra"

func init() { gatewayParams = append(gatewayParams, alertParams...) }

func checkAlertDays(v string) (string, error) {
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 || n > 3650 {
		return "", errors.New("use a whole number of days from 0 (off) to 3650")
	}
	return strconv.Itoa(n), nil
}

// checkLearning takes 0s (no learning) to a year.
func checkLearning(v string) (string, error) {
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 || d > 8760*time.Hour {
		return "", errors.New("use a duration from 0s (alert from the first login) to 8760h, such as 168h")
	}
	return d.String(), nil
}

var toolRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)

// checkToolList canonicalizes a tool list: lower case, sorted, no repeats.
func checkToolList(v string) (string, error) {
	seen := map[string]bool{}
	var out []string
	for _, t := range strings.Split(v, ",") {
		t = strings.ToLower(strings.TrimSpace(t))
		if t == "" || seen[t] {
			continue
		}
		if !toolRE.MatchString(t) {
			return "", fmt.Errorf("%q is not a tool name: letters, digits, '.', '_' and '-', at most 64", t)
		}
		seen[t] = true
		out = append(out, t)
	}
	if len(out) > 200 {
		return "", errors.New("at most 200 tools")
	}
	sort.Strings(out)
	return strings.Join(out, ","), nil
}

// fingerprintRE: [NAME:]KEY[=VALUE],... (alerting.MatchFingerprint).
var fingerprintRE = regexp.MustCompile(`^([a-z0-9][a-z0-9._-]{0,31}:)?` + fpElem + `(,` + fpElem + `)*$`)

const fpElem = `[a-z_][a-z0-9_.]{0,63}(=[A-Za-z0-9_.-]{1,63})?`

func checkFingerprints(v string) (string, error) {
	var out []string
	for _, f := range strings.Split(v, ";") {
		f = strings.ReplaceAll(strings.TrimSpace(f), " ", "")
		if f == "" {
			continue
		}
		if !fingerprintRE.MatchString(f) || len(f) > 1024 {
			return "", fmt.Errorf("%q is not a startup packet shape ([NAME:]KEY[=VALUE],..., e.g. tool:user,database=postgres)", f)
		}
		_, shape, named := strings.Cut(f, ":")
		if !named {
			shape = f
		}
		for _, e := range strings.Split(shape, ",") {
			if k, _, valued := strings.Cut(e, "="); valued && !slices.Contains(alerting.FingerprintValueKeys, k) {
				return "", fmt.Errorf("%q: only %s can be given a value", f, strings.Join(alerting.FingerprintValueKeys, ", "))
			}
		}
		out = append(out, f)
	}
	if len(out) > 50 {
		return "", errors.New("at most 50 fingerprints")
	}
	return strings.Join(out, ";"), nil
}

// checkWebhookURL: HTTPS only, so alerts never cross a network in clear.
func checkWebhookURL(v string) (string, error) {
	if v == "" {
		return "", nil
	}
	u, err := url.Parse(v)
	if err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil || u.Fragment != "" || len(v) > 2048 {
		return "", errors.New("use an https:// URL without user information, at most 2048 bytes")
	}
	return v, nil
}
