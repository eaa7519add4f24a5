package vmm

// haltDevice is the guest's EXIT: an output whose effect is that the VM
// stops with the guest's exit code (Machine.Wait reports it). Delivering
// it does nothing else; the dispatcher stops the VM whatever the hook did.
type haltDevice struct{ noInput }

func (haltDevice) check(*Exit) int32                    { return StatusOK }
func (haltDevice) deliver(uint32, uint64, []byte) error { return nil }

const haltStateVersion = 1

func (haltDevice) saveState() ([]byte, error) {
	return stateWithVersion(haltStateVersion, nil), nil
}

func (haltDevice) restoreState(b []byte) error {
	_, err := stateBody("halt", b, haltStateVersion, 0)
	return err
}
