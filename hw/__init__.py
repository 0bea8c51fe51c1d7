"""The hw backend: the simulator's policies and IR executed for real with PyTorch.

Public API (torch is imported only when these run):
- `hw.run.run_scenario(scenario, out_dir, device="cuda"|"cpu")`, `hw.run.replay_ir(ir, out_dir, device)`:
  write events.parquet, requests.csv, summary.json, trace.json, ir.jsonl (the simulator's
  schema) plus hw.json (device, torch, mode);
- `hw.cli.register(subparsers)`: `ligersim hw run|replay`;
- `hw.runtime.TorchRuntime` / `hw.runtime.drive`: the Runtime protocol on torch streams and events;
- `hw.kernels.KernelLibrary`: every kernel kind at its real shapes, computing the real layer;
- `hw.generative`: generative serving — each iteration's batch (`Composition`, from the live
  scheduler or the IR's meta), token ids, the paged KV cache; `run_scenario(..., logits=True)`
  writes every emitted token's logits (logits.pt), which `hw.reference.generate` reproduces;
- `hw.collectives`: NCCL/gloo through torch.distributed, or the single-GPU emulated collective;
- `hw.verify.verify()`: tensor-parallel layers on gloo ranks against `hw.reference`.
"""
