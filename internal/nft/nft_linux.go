package nft

import (
	"encoding/binary"
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Names inside the table.
const (
	chainName = "input"
	set4Name  = "allow4"
	set6Name  = "allow6"
	// elemsPerMsg splits set elements over several messages of the batch,
	// as nft does, to keep each message small.
	elemsPerMsg = 256
)

// Option changes how Apply and Remove reach the kernel.
type Option func(*options)

type options struct {
	netNS int
}

// WithNetNS makes Apply or Remove act in the network namespace that fd (an
// open /proc/PID/ns/net or /run/netns/NAME) refers to, instead of the
// calling thread's. The caller keeps ownership of fd.
func WithNetNS(fd int) Option { return func(o *options) { o.netNS = fd } }

func newConn(opts []Option) (*nftables.Conn, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	var copts []nftables.ConnOption
	if o.netNS > 0 {
		copts = append(copts, nftables.WithNetNSFd(o.netNS))
	}
	c, err := nftables.New(copts...)
	if err != nil {
		return nil, fmt.Errorf("nft: opening netlink: %w", err)
	}
	return c, nil
}

// Apply creates or replaces the inet table named table so that it enforces
// r. The old table, if any, is deleted and the new one added in one netlink
// batch, which the kernel commits atomically: no packet sees a moment without
// rules. On error the old table is left as it was.
func Apply(table string, r Rules, opts ...Option) error {
	if err := checkTable(table); err != nil {
		return err
	}
	v4, v6, err := r.check()
	if err != nil {
		return err
	}
	c, err := newConn(opts)
	if err != nil {
		return err
	}
	t := &nftables.Table{Name: table, Family: nftables.TableFamilyINet}
	// Adding first makes the delete valid whether or not the table exists.
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
	policy := nftables.ChainPolicyAccept
	ch := c.AddChain(&nftables.Chain{
		Name:     chainName,
		Table:    t,
		Type:     nftables.ChainTypeFilter,
		Hooknum:  nftables.ChainHookInput,
		Priority: nftables.ChainPriorityFilter,
		Policy:   &policy,
	})
	// Set IDs are chosen here rather than left to the library, whose
	// counter is a global without a lock; they only need to be unique
	// within the batch.
	s4 := &nftables.Set{Table: t, ID: 1, Name: set4Name, KeyType: nftables.TypeIPAddr, Interval: true}
	s6 := &nftables.Set{Table: t, ID: 2, Name: set6Name, KeyType: nftables.TypeIP6Addr, Interval: true}
	for _, s := range []struct {
		set   *nftables.Set
		elems []nftables.SetElement
	}{{s4, elements(v4)}, {s6, elements(v6)}} {
		if err := c.AddSet(s.set, nil); err != nil {
			return fmt.Errorf("nft: building set %s: %w", s.set.Name, err)
		}
		for len(s.elems) > 0 {
			n := min(len(s.elems), elemsPerMsg)
			if err := c.SetAddElements(s.set, s.elems[:n]); err != nil {
				return fmt.Errorf("nft: building set %s: %w", s.set.Name, err)
			}
			s.elems = s.elems[n:]
		}
	}
	port := binary.BigEndian.AppendUint16(nil, r.Port)
	tcpDport := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: port},
	}
	allow := func(nfproto byte, saddrOff, saddrLen uint32, s *nftables.Set) []expr.Any {
		e := []expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{nfproto}},
		}
		e = append(e, tcpDport...)
		return append(e,
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: saddrOff, Len: saddrLen},
			&expr.Lookup{SourceRegister: 1, SetName: s.Name, SetID: s.ID},
			&expr.Verdict{Kind: expr.VerdictAccept},
		)
	}
	c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: allow(unix.NFPROTO_IPV4, 12, 4, s4)})
	c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: allow(unix.NFPROTO_IPV6, 8, 16, s6)})
	c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: append(tcpDport[:len(tcpDport):len(tcpDport)],
		&expr.Counter{},
		&expr.Verdict{Kind: expr.VerdictDrop},
	)})
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nft: applying table inet %s: %w", table, err)
	}
	return nil
}

// elements turns intervals into interval-set elements.
func elements(iv []interval) []nftables.SetElement {
	e := make([]nftables.SetElement, 0, 2*len(iv))
	for _, i := range iv {
		e = append(e, nftables.SetElement{Key: i.from.AsSlice()})
		if i.end.IsValid() {
			e = append(e, nftables.SetElement{Key: i.end.AsSlice(), IntervalEnd: true})
		}
	}
	return e
}

// Remove deletes the inet table named table. A table that does not exist is
// not an error.
func Remove(table string, opts ...Option) error {
	if err := checkTable(table); err != nil {
		return err
	}
	c, err := newConn(opts)
	if err != nil {
		return err
	}
	t := &nftables.Table{Name: table, Family: nftables.TableFamilyINet}
	c.AddTable(t)
	c.DelTable(t)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nft: removing table inet %s: %w", table, err)
	}
	return nil
}
