package cli

import (
	"errors"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgshield/pgshield/internal/apitype"
)

func newStorage(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "storage", Short: "Encrypted volume: show, resize"}
	cmd.AddCommand(&cobra.Command{Use: "show", Short: "Show the volume: backend, size, used, free, autogrow", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			info, err := g.client().Storage(cmd.Context())
			if err != nil {
				return err
			}
			return emit(cmd.OutOrStdout(), g, info, func(tw *tabwriter.Writer) { storageTable(tw, *info) })
		}})
	var size byteSize
	resize := &cobra.Command{Use: "resize", Short: "Grow the volume to --size (online when the kernel allows, else with a brief PostgreSQL stop)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := requireRoot(); err != nil {
				return err
			}
			if size.bytes == 0 {
				return usageError{errors.New("--size is required (e.g. --size 40GiB)")}
			}
			res, err := g.client().ResizeStorage(cmd.Context(), size.bytes)
			if err != nil {
				return err
			}
			return emit(cmd.OutOrStdout(), g, res, func(tw *tabwriter.Writer) {
				gr := res.Grow
				how := "online, PostgreSQL kept running"
				if gr.Method == apitype.GrowOffline {
					how = fmt.Sprintf("offline: PostgreSQL was stopped for %s (online growth needs CAP_SYS_RESOURCE)",
						time.Duration(gr.DowntimeSeconds*float64(time.Second)).Round(100*time.Millisecond))
				}
				fmt.Fprintf(tw, "grown\tfrom %s to %s, %s\n", mib(uint64(gr.FromBytes)), mib(uint64(gr.ToBytes)), how)
				storageTable(tw, res.Storage)
			})
		}}
	resize.Flags().Var(&size, "size", "new size of the volume (e.g. 40GiB); it only grows")
	cmd.AddCommand(resize)
	return cmd
}

func mib(n uint64) string { return fmt.Sprintf("%d MiB", n>>20) }

func storageTable(tw *tabwriter.Writer, s apitype.StorageInfo) {
	fmt.Fprintf(tw, "backend\t%s\n", s.Description)
	fmt.Fprintf(tw, "state\t%s\n", s.State)
	fmt.Fprintf(tw, "size\t%s\n", mib(s.SizeBytes))
	if s.State == apitype.KeyAvailable {
		fmt.Fprintf(tw, "used\t%s\n", mib(s.UsedBytes))
		fmt.Fprintf(tw, "free\t%s\n", mib(s.FreeBytes))
	}
	switch {
	case s.ImagePath != "":
		fmt.Fprintf(tw, "image\t%s (%s, %s allocated)\n", s.ImagePath, mib(uint64(s.ImageBytes)), mib(uint64(s.ImageAllocatedBytes)))
		if s.LoopDevice != "" {
			fmt.Fprintf(tw, "loop device\t%s\n", s.LoopDevice)
		}
	case s.StoragePath != "":
		fmt.Fprintf(tw, "storage path\t%s\n", s.StoragePath)
	case s.CipherDir != "":
		fmt.Fprintf(tw, "cipher directory\t%s\n", s.CipherDir)
		if s.FUSEPID > 0 {
			fmt.Fprintf(tw, "gocryptfs pid\t%d (restarts %d)\n", s.FUSEPID, s.FUSERestarts)
		}
	}
	fmt.Fprintf(tw, "mount point\t%s\n", s.MountPoint)
	if s.HostFreeBytes > 0 {
		fmt.Fprintf(tw, "host free\t%s\n", mib(s.HostFreeBytes))
	}
	if s.Full != "" {
		fmt.Fprintf(tw, "FULL\t%s: %s\n", s.Full, s.FullDetail)
	}
	auto := "off"
	switch {
	case s.AutogrowNote != "":
		auto = s.AutogrowNote
	case s.Autogrow:
		auto = "on (grows 25%, at least 1 GiB, when under 10% is free)"
	}
	fmt.Fprintf(tw, "autogrow\t%s\n", auto)
	if g := s.LastGrow; g != nil {
		kind := "manual"
		if g.Automatic {
			kind = "automatic"
		}
		fmt.Fprintf(tw, "last growth\t%s, %s to %s, %s (%s)\n", g.At.Local().Format(time.RFC3339), mib(uint64(g.FromBytes)), mib(uint64(g.ToBytes)), g.Method, kind)
	}
}
