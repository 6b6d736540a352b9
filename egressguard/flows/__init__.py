"""Flow stage: PACKET rows -> bidirectional flow records with bounded memory."""
from egressguard.flows.table import FlowBatch, FlowSettings, FlowTable, burst_bytes

__all__ = ["FlowBatch", "FlowSettings", "FlowTable", "burst_bytes"]
