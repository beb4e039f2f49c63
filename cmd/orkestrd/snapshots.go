package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"time"

	"github.com/orkestr-eu/orkestr/internal/lifecycle"
)

// adminSnapshotsGC removes the snapshot store's objects that no sandbox
// references (see lifecycle.CollectSnapshots).
func adminSnapshotsGC(args []string) error {
	fl := flag.NewFlagSet("admin snapshots gc", flag.ContinueOnError)
	var sf storeFlags
	sf.register(fl)
	dry := fl.Bool("dry-run", false, "list what would be removed; remove nothing")
	minAge := fl.Duration("min-age", time.Hour, "only objects older than this (an upload whose pause is not yet recorded is younger)")
	if _, err := parseArgs(fl, args); err != nil {
		return err
	}
	cfg, err := loadConfig(sf.configFile)
	if err != nil {
		return err
	}
	objects, _, err := snapshotStore(cfg, sf.dataDir)
	if err != nil {
		return err
	}
	if objects == nil {
		return errors.New("no snapshot store is configured (snapshots.store s3, or fs with snapshots.dir): snapshots live in each node's data directory, which its node cleans up itself")
	}
	ctx := context.Background()
	st, err := sf.open(ctx)
	if err != nil {
		return err
	}
	defer st.Close()
	grace := *minAge
	if grace <= 0 {
		grace = -1
	}
	removed, err := lifecycle.CollectSnapshots(ctx, st, objects, *dry, grace)
	verb := "removed"
	if *dry {
		verb = "would remove"
	}
	var bytes int64
	for _, o := range removed {
		fmt.Printf("%s %s (%d bytes, %s)\n", verb, o.Key, o.Size, o.Modified.UTC().Format(time.RFC3339))
		bytes += o.Size
	}
	fmt.Printf("%s %d objects, %d bytes\n", verb, len(removed), bytes)
	return err
}
