package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgshield/pgshield/internal/pgbackend"
)

type querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// PrincipalError is a refused principal change the caller should show as is.
type PrincipalError struct {
	NotFound bool
	Msg      string
}

func (e *PrincipalError) Error() string { return e.Msg }

func principalErr(format string, args ...any) error {
	return &PrincipalError{Msg: fmt.Sprintf(format, args...)}
}

// CheckPrincipal validates a new principal's fields.
func CheckPrincipal(p pgbackend.TokenPrincipal, reserved func(string) bool) error {
	if err := CheckPrincipalName(p.Name, reserved); err != nil {
		return err
	}
	if p.ObjectID == "" || len(p.ObjectID) > 128 || strings.ContainsFunc(p.ObjectID, func(r rune) bool { return isControl(r) || r == ' ' }) {
		return principalErr("invalid object ID %q: use 1 to 128 printable characters without spaces", p.ObjectID)
	}
	switch p.Kind {
	case pgbackend.PrincipalUser, pgbackend.PrincipalGroup, pgbackend.PrincipalService:
	default:
		return principalErr("invalid principal type %q: use user, group or service", p.Kind)
	}
	return nil
}

// CheckPrincipalName refuses a name a token principal may not have (the
// checks of creation that concern the name alone).
func CheckPrincipalName(name string, reserved func(string) bool) error {
	switch {
	case name == "" || len(name) > 63 || !utf8.ValidString(name) || strings.ContainsFunc(name, isControl):
		return principalErr("invalid principal name %q: use 1 to 63 bytes of printable characters", name)
	case strings.HasPrefix(strings.ToLower(name), "pg_"):
		return principalErr("invalid principal name %q: the pg_ prefix is reserved", name)
	case reserved(name) || strings.EqualFold(name, "public"):
		return principalErr("invalid principal name %q: reserved", name)
	case !pgbackend.TokenShapedName(name):
		return principalErr("invalid principal name %q: a principal's name must be one SQL has to quote (as identity-provider names are: alice@contoso.com, \"Contoso DBAs\", ingest-app); plain lower-case identifiers are kept for password roles, so that the first authentication request never reveals whether a name is a principal", name)
	}
	return nil
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }

// CreatePrincipal creates the role (no password: it logs in with tokens
// only) and its mapping in one transaction. Admin principals get what the
// server administrator has.
func (c *Catalog) CreatePrincipal(ctx context.Context, p pgbackend.TokenPrincipal, reserved func(string) bool) (pgbackend.TokenPrincipal, error) {
	if err := CheckPrincipal(p, reserved); err != nil {
		return p, err
	}
	if err := checkPrincipalTable(ctx, c.Pool); err != nil {
		return p, err
	}
	tx, err := c.Pool.Begin(ctx)
	if err != nil {
		return p, err
	}
	defer tx.Rollback(context.Background())
	role := pgx.Identifier{p.Name}.Sanitize()
	attrs := "LOGIN"
	if p.Admin {
		attrs += " CREATEROLE CREATEDB"
	}
	stmts := []string{sqlCreateRole(role, attrs)}
	if p.Admin {
		stmts = append(stmts, adminGrants(role)...)
	}
	stmts = append(stmts, sqlCommentRole(role, QuoteLiteral("pgshield token principal ("+p.Kind+")")))
	for _, s := range stmts {
		if _, err := tx.Exec(ctx, s); err != nil {
			return p, principalPgErr(err, p)
		}
	}
	err = tx.QueryRow(ctx, sqlInsertPrincipal, p.Name, p.ObjectID, p.Kind, p.Admin).Scan(&p.CreatedAt)
	if err != nil {
		return p, principalPgErr(err, p)
	}
	if err := tx.Commit(ctx); err != nil {
		return p, principalPgErr(err, p)
	}
	c.forget(p.Name)
	return p, nil
}

func principalPgErr(err error, p pgbackend.TokenPrincipal) error {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return err
	}
	switch pe.Code {
	case "42710":
		return principalErr("role %q already exists", p.Name)
	case "23505":
		return principalErr("object ID %q is already mapped to another principal", p.ObjectID)
	case "2BP01":
		return principalErr("role %q cannot be dropped: %s (%s); reassign or drop its objects first", p.Name, pe.Message, pe.Detail)
	}
	return principalErr("%s", pe.Message)
}

// ListPrincipals returns the mapped principals whose roles still exist.
func (c *Catalog) ListPrincipals(ctx context.Context) ([]pgbackend.TokenPrincipal, error) {
	if err := checkPrincipalTable(ctx, c.Pool); err != nil {
		return nil, err
	}
	rows, err := c.Pool.Query(ctx, sqlListPrincipals)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (pgbackend.TokenPrincipal, error) {
		var p pgbackend.TokenPrincipal
		err := row.Scan(&p.Name, &p.ObjectID, &p.Kind, &p.Admin, &p.CreatedAt)
		return p, err
	})
}

// DeletePrincipal drops the principal's role and its mapping. A role that
// owns objects is refused with PostgreSQL's reason, as DROP ROLE does.
func (c *Catalog) DeletePrincipal(ctx context.Context, name string) (pgbackend.TokenPrincipal, error) {
	p := pgbackend.TokenPrincipal{Name: name}
	if err := checkPrincipalTable(ctx, c.Pool); err != nil {
		return p, err
	}
	tx, err := c.Pool.Begin(ctx)
	if err != nil {
		return p, err
	}
	defer tx.Rollback(context.Background())
	err = tx.QueryRow(ctx, sqlDeletePrincipal, name).Scan(&p.ObjectID, &p.Kind, &p.Admin, &p.CreatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return p, &PrincipalError{NotFound: true, Msg: fmt.Sprintf("principal %q does not exist", name)}
	}
	if err != nil {
		return p, err
	}
	role := pgx.Identifier{name}.Sanitize()
	var stmts []string
	if p.Admin {
		// What --admin granted (and what the principal granted on from
		// it) would keep DROP ROLE from succeeding.
		stmts = append(stmts, adminRevokes(role)...)
	}
	for _, s := range append(stmts, sqlDropRole(role)) {
		if _, err := tx.Exec(ctx, s); err != nil {
			return p, principalPgErr(err, p)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return p, principalPgErr(err, p)
	}
	c.forget(name)
	return p, nil
}

// QuoteLiteral quotes s as an SQL string literal (standard_conforming_strings
// is on, so only quotes need doubling).
func QuoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }
