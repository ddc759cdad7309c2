/**
 * The ZeroMQ context's socket limit. libzmq allows 1,023 sockets per context by default, and a
 * gateway holds one SUB per engine stream plus a DEALER per replay in flight: past ~1,000
 * streams a replay's socket fails with EMFILE. libzmq sizes its socket table when the context's
 * first socket is created, so every module that creates sockets imports this one, which raises
 * the limit at import, before any socket exists. The process's file-descriptor limit
 * (`ulimit -n`, ~2 per connected socket) still applies.
 */
import * as zmq from "zeromq";

/** sockets one process may hold: far beyond any fleet one replica follows, within libzmq's own limit */
export const ZMQ_MAX_SOCKETS = Math.min(zmq.context.maxSocketsLimit, 65_535);

if (zmq.context.maxSockets < ZMQ_MAX_SOCKETS) zmq.context.maxSockets = ZMQ_MAX_SOCKETS;
