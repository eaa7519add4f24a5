package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// diskState is what a host's disk is current to, kept in a side file next
// to the disk, DISK.ftvm-state (the guest's disk layout is unchanged). It
// lets a host decide on its own, at a cold restart, whether its disk holds
// every acknowledged write: see daemon.firstEpoch.
//
// The file is one JSON object (fields below, added and never renamed),
// replaced whole by writing DISK.ftvm-state.tmp, fsyncing it, renaming it
// over the old one and fsyncing the directory: a crash leaves the old
// state or the new one, never a torn one.
//
//	version  1
//	vm_id    the VM the disk belongs to
//	host     the host (--host-name) whose disk it is
//	epoch    the epoch this disk follows: the primary's epoch while it is
//	         primary, the epoch of the primary it replicates on a secondary
//	role     "primary": this host was primary in epoch and the disk got
//	         every write released before epoch (a secondary taking over
//	         drains its queued writes before it writes this) and every
//	         one it released; "secondary": the disk is a replica in
//	         step with epoch's primary, through seq; "joining": a
//	         checkpoint is being (or was half) written over it: not current
//	seq      the log position through which outputs were released (primary)
//	         or heard released (secondary) when the file was written
//	clean    the daemon stopped cleanly after writing it
//	written  when (RFC 3339)
type diskState struct {
	Version int    `json:"version"`
	VMID    string `json:"vm_id"`
	Host    string `json:"host"`
	Epoch   uint64 `json:"epoch"`
	Role    string `json:"role"`
	Seq     uint64 `json:"seq"`
	Clean   bool   `json:"clean"`
	Written string `json:"written"`
}

// Roles of a diskState.
const (
	diskRolePrimary   = "primary"
	diskRoleSecondary = "secondary"
	diskRoleJoining   = "joining"
	diskStateVersion  = 1
	diskStateSuffix   = ".ftvm-state"
)

func diskStatePath(disk string) string { return disk + diskStateSuffix }

// readDiskState reads the side file of disk; ok is false when there is
// none (a new disk, or one older ftvm versions wrote).
func readDiskState(disk string) (st diskState, ok bool, err error) {
	b, err := os.ReadFile(diskStatePath(disk))
	if errors.Is(err, os.ErrNotExist) {
		return st, false, nil
	}
	if err != nil {
		return st, false, fmt.Errorf("disk state: %w", err)
	}
	if err := json.Unmarshal(b, &st); err != nil || st.Version < 1 {
		return st, false, fmt.Errorf("disk state %s is not a state file (%v): move it aside and use ftvm recover if this disk is known to be current", diskStatePath(disk), err)
	}
	return st, true, nil
}

// writeDiskState replaces the side file of disk, crash-safely.
func writeDiskState(disk string, st diskState) error {
	st.Version = diskStateVersion
	st.Written = time.Now().UTC().Format(time.RFC3339Nano)
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	path := diskStatePath(disk)
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("disk state: %w", err)
	}
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("disk state: %w", err)
	}
	dir, err := os.Open(filepath.Dir(path))
	if err != nil {
		return fmt.Errorf("disk state: %w", err)
	}
	defer dir.Close()
	if err := dir.Sync(); err != nil {
		return fmt.Errorf("disk state: fsync %s: %w", filepath.Dir(path), err)
	}
	return nil
}

// String says what the state means, for messages.
func (s diskState) String() string {
	switch s.Role {
	case diskRolePrimary:
		return fmt.Sprintf("current to epoch %d as its primary (released through seq %d)", s.Epoch, s.Seq)
	case diskRoleSecondary:
		return fmt.Sprintf("a replica of epoch %d's primary through seq %d", s.Epoch, s.Seq)
	case diskRoleJoining:
		return fmt.Sprintf("half written by a checkpoint of epoch %d's primary: not current", s.Epoch)
	}
	return fmt.Sprintf("in unknown state %q at epoch %d", s.Role, s.Epoch)
}
