"""Calibration plumbing shared by the compression families: image batches and runs that stop after
a module (:mod:`.batches`), sequential block-by-block runs from kept block inputs
(:mod:`.block_cursor`) and layer-input Hessians with the OBS sweep (:mod:`.hessian`)."""
