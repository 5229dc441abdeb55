"""The BMS on the vehicle side: CAN frames from the shipped DBC (``ssb_bms.dbc``), encoded and
decoded only through cantools (:mod:`bms.vehicle.codec`), and the per-tick link that receives
the vehicle's requests and heartbeat and sends the BMS's cyclic frames
(:mod:`bms.vehicle.link`). Control path: it takes a python-can bus object made by the
application layer and imports no CAN backend. docs/can.md."""
