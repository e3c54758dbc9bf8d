// Package deptest checks what a package pulls into the binary, as
// tailscale's tstest/deptest does: a test names the packages that must
// never reach it, and fails when a new import brings one in.
package deptest

import (
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// DepChecker lists the dependencies of one package.
type DepChecker struct {
	// Pkg is the package to check, as go list takes it ("." for the
	// package under test).
	Pkg string
	// BadPrefixes are import paths that must not be dependencies, each
	// with everything under it: "github.com/aws" also forbids
	// "github.com/aws/aws-sdk-go-v2/service/kms".
	BadPrefixes []string
}

// Check runs go list -deps on c.Pkg (build dependencies, not test ones) and
// reports each forbidden dependency. It skips only when there is no go
// tool to run.
func (c DepChecker) Check(t *testing.T) {
	t.Helper()
	goTool := goTool()
	if goTool == "" {
		t.Skip("the go tool is not installed")
	}
	bad, err := c.find(goTool)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range bad {
		t.Errorf("%s depends on %s", c.Pkg, b)
	}
}

// find returns the forbidden dependencies of c.Pkg, each as
// "dep (forbidden: prefix)".
func (c DepChecker) find(goTool string) ([]string, error) {
	out, err := exec.Command(goTool, "list", "-deps", "-f", "{{.ImportPath}}", c.Pkg).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return nil, fmt.Errorf("go list -deps %s: %v\n%s", c.Pkg, err, ee.Stderr)
		}
		return nil, fmt.Errorf("go list -deps %s: %v", c.Pkg, err)
	}
	deps := strings.Fields(string(out))
	if len(deps) == 0 {
		return nil, fmt.Errorf("go list -deps %s listed nothing", c.Pkg)
	}
	var bad []string
	for _, dep := range deps {
		for _, p := range c.BadPrefixes {
			if dep == p || strings.HasPrefix(dep, p+"/") {
				bad = append(bad, fmt.Sprintf("%s (forbidden: %s)", dep, p))
			}
		}
	}
	return bad, nil
}

// goTool finds the go command: go test puts its own GOROOT/bin first on
// PATH; the GOROOT the test was built with is the fallback.
func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	p := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := exec.LookPath(p); err == nil {
		return p
	}
	return ""
}

// CloudSDKs are the module prefixes of the cloud KMS SDKs the key drivers
// link: a package that must stay lean lists them among its BadPrefixes.
var CloudSDKs = []string{"gocloud.dev", "github.com/aws", "github.com/Azure", "cloud.google.com", "github.com/hashicorp/vault"}
