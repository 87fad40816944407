// protoc-gen-swift-ipc: generates Perfetto IPC service code for every `service` in a .proto.
//
// For each service it writes, next to protoc-gen-swift's messages:
// * `<Prefix><Service>`: an enum holding the wire `ServiceDescriptor`;
// * `<Prefix><Service>Handler`: the server protocol, one method per RPC taking a `Deferred`;
// * `<Prefix><Service>AsyncHandler`: the same as `async` methods (streaming ones get a writer);
// * `<Prefix><Service>Proxy`: the client proxy with callback, `async throws` and (for
//   streaming RPCs) `AsyncSequence` methods.
//
// Options (`--swift-ipc_opt`): `Visibility=Public|Internal|Package` (default Internal),
// `FileNaming=DropPath|FullPath` (default FullPath).
//
//   protoc --plugin=protoc-gen-swift-ipc=PATH --swift-ipc_out=DIR --swift-ipc_opt=Visibility=Public x.proto

import Foundation
import SwiftProtobufPluginLibrary

@main
struct IPCServiceGenerator: CodeGenerator {
    var supportedFeatures: [Google_Protobuf_Compiler_CodeGeneratorResponse.Feature] { [.proto3Optional] }
    var version: String? { "1.0" }

    func generate(
        files: [FileDescriptor], parameter: any CodeGeneratorParameter,
        protoCompilerContext: any ProtoCompilerContext, generatorOutputs: any GeneratorOutputs
    ) throws {
        var options = GeneratorOptions()
        for (key, value) in parameter.parsedPairs {
            switch key {
            case "Visibility":
                switch value {
                case "Public": options.visibility = "public "
                case "Package": options.visibility = "package "
                case "Internal": options.visibility = ""
                default: throw GeneratorError("unknown Visibility \(value)")
                }
            case "FileNaming":
                guard value == "DropPath" || value == "FullPath" else { throw GeneratorError("unknown FileNaming \(value)") }
                options.dropPath = value == "DropPath"
            default:
                throw GeneratorError("unknown option \(key)")
            }
        }
        for file in files where !file.services.isEmpty {
            let namer = SwiftProtobufNamer(currentFile: file, protoFileToModuleMappings: ProtoFileToModuleMappings())
            var printer = CodePrinter(indent: "    ".unicodeScalars, addNewlines: true)
            ServiceFileWriter(file: file, namer: namer, options: options).write(into: &printer)
            var name = file.name
            if options.dropPath, let slash = name.lastIndex(of: "/") { name = String(name[name.index(after: slash)...]) }
            if name.hasSuffix(".proto") { name = String(name.dropLast(".proto".count)) }
            try generatorOutputs.add(fileName: name + ".ipc.swift", contents: printer.content)
        }
    }
}

struct GeneratorOptions {
    var visibility = ""
    var dropPath = false
}

struct GeneratorError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
