// Weak references without side tables (Weak.swift): they answer as Swift's `weak` does, from
// any thread, and survive the places where Swift 6.3.1 gets an unowned Optional's layout wrong.

import Dispatch
import Testing
@testable import IPCProtocol

@Suite("Weak references without side tables")
struct WeakTests {
    final class Target {
        let name: String
        init(_ name: String) { self.name = name }
    }

    @Test func theObjectWhileItLivesThenNil() {
        var target: Target? = Target("one")
        let reference = Weak(target)
        let box = WeakBox(target)
        #expect(reference.object === target)
        #expect(box.object === target)
        target = nil
        #expect(reference.object == nil)
        #expect(box.object == nil)
        #expect(Weak<Target>(nil).object == nil)
    }

    final class Probe {
        var reference: Weak<SelfLookup>?
        var loadedInDeinit: Bool?
        var referredToInDeinit: Bool?
    }
    final class SelfLookup {
        let probe: Probe
        init(_ probe: Probe) { self.probe = probe }
        // As an in-process listener unregisters itself: by looking itself up.
        deinit {
            probe.loadedInDeinit = probe.reference?.object != nil
            probe.referredToInDeinit = probe.reference?.refers(to: self)
        }
    }

    @Test func anObjectLooksGoneFromItsOwnDeinitButCanStillFindItsEntry() {
        let probe = Probe()
        do {
            let object = SelfLookup(probe)
            probe.reference = Weak(object)
            #expect(probe.reference?.object === object)
            #expect(probe.reference?.refers(to: SelfLookup(Probe())) == false)
        }
        #expect(probe.loadedInDeinit == false, "a load in deinit is nil, as a weak load is")
        #expect(probe.referredToInDeinit == true, "the entry still names it, for removal")
    }

    @Test func aMissingKeyIsNilAndAPresentOneIsNot() {
        // Swift 6.3.1 answers a lookup of a missing key with a value when the stored struct holds
        // an `unowned(safe) var x: AnyObject?`; Weak must not.
        let target = Target("kept")
        var table: [String: Weak<Target>] = [:]
        table["kept"] = Weak(target)
        table["nil"] = Weak(nil)
        #expect(table["missing"] == nil)
        #expect(table["nil"] != nil && table["nil"]?.object == nil)
        #expect(table["kept"]?.object === target)
        var anchors: [String: ObjectAnchor] = [:]
        anchors["kept"] = ObjectAnchor(target)
        #expect(anchors["missing"] == nil)
        #expect(anchors["kept"]?.address == Unmanaged.passUnretained(target).toOpaque())
    }

    /// Made in unspecialized generic code, read in code that knows the type.
    @_optimize(none)
    static func nothing<Object: AnyObject>(_: Object.Type) -> Weak<Object>? { nil }
    @_optimize(none)
    static func emptyReference<Object: AnyObject>(_: Object.Type) -> Weak<Object>? { Weak(nil) }

    @Test func optionalsMadeInGenericCodeReadTheSameInConcreteCode() {
        #expect(Self.nothing(Target.self) == nil)
        let empty = Self.emptyReference(Target.self)
        #expect(empty != nil && empty?.object == nil)
    }

    final class Holder: @unchecked Sendable {
        var target: Target?
        init(_ target: Target) { self.target = target }
    }

    @Test func anObjectReleasedOnAnotherThreadIsNilOnThisOne() {
        for round in 0..<200 {
            let holder = Holder(Target("\(round)"))
            let reference = Weak(holder.target)
            let released = DispatchSemaphore(value: 0)
            DispatchQueue.global().async {
                holder.target = nil  // the last strong reference, dropped there
                released.signal()
            }
            // This load races the release: it finds the object or nil, never a dangling one.
            if let object = reference.object { #expect(object.name == "\(round)") }
            released.wait()
            #expect(reference.object == nil)
        }
    }
}
