// The smallest useful host and client: what an application embedding the library pays in
// binary size and resident memory (BENCHMARKS.md, "Footprint"). No argument parser, no
// Foundation: the IPC core, the epoll backend and one generated service.
//
//   minimal-echo serve /tmp/echo.sock     serves EchoService until killed
//   minimal-echo call /tmp/echo.sock      one Echo call; prints the reply's data; stays up
//                                          with --idle (to be measured) until killed
//
// Smallest as one static executable (6.4 MB resident idle here, BENCHMARKS.md):
//   swift build -c release --product minimal-echo -Xswiftc -static-executable

#if canImport(FoundationEssentials)
import FoundationEssentials
#endif
import IPCEchoService
import IPCProtocol
import IPCUnixSocket

#if canImport(Glibc)
import Glibc
#endif

let arguments = CommandLine.arguments
guard arguments.count >= 3, arguments[1] == "serve" || arguments[1] == "call" else {
    print("usage: minimal-echo serve|call SOCKET [--idle]")
    exit(2)
}
let address = arguments[2]
let loop = try EpollEventLoop()

if arguments[1] == "serve" {
    let host = try IPCHost(backend: .unixSocket(address, loop: loop))
    host.expose(EchoServiceImplementation())
    print("serving at \(address)")
    loop.run()
    host.close()
} else {
    try call(address, idle: arguments.contains("--idle"))
}

/// One Echo call on `loop`; with `idle`, the client stays connected until killed.
func call(_ address: String, idle: Bool) throws {
    let client = IPCClient(backend: .unixSocket(address, loop: loop))
    let proxy = Pfpeers_EchoServiceProxy()
    client.bind(proxy)
    var request = Pfpeers_EchoRequest()
    request.data = Data("hello".utf8)
    final class Outcome { var reply: AsyncResult<Pfpeers_EchoReply>? }
    let outcome = Outcome()
    proxy.onConnect = { proxy.echo(request) { outcome.reply = $0 } }
    guard loop.run(until: { outcome.reply != nil }, timeout: .seconds(5)), let message = outcome.reply?.message else {
        print("no reply from \(address)")
        exit(1)
    }
    print("reply: \(String(decoding: message.data, as: UTF8.self))")
    fflush(nil)  // before idling: whoever reads our output (scripts/footprint.sh) waits for it
    if idle { loop.run() }
    client.close()
}
