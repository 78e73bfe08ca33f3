package org.lada.sample

import android.content.Context
import android.os.Build
import android.os.Looper
import android.util.Log
import com.chaquo.python.Kwarg
import com.chaquo.python.PyObject
import com.chaquo.python.Python
import com.chaquo.python.android.AndroidPlatform
import org.json.JSONArray
import org.json.JSONObject
import java.io.File

/** A bridge reply with `"ok": false`: [code] is one of the codes listed in lada_client/bridge.py. */
class LadaBridgeException(val code: String, message: String) : Exception("$code: $message") {
    /** Codes a background worker should retry later rather than report. */
    val isTransient: Boolean
        get() = code in setOf("busy", "coordinator_unreachable", "coordinator_error")
}

/** One candidate for [LadaBridge.score]: a teacher path and its sequence log-prob under the LLM. */
data class ScoreCandidate(
    val question: String,
    val path: String,
    val llmLogprob: Double,
    val llmTokens: Int,
)

/**
 * Where the SDK's files live on the device.
 *
 * onnxruntime needs a real file path, and APK assets are not files, so the scoring model is
 * copied out of the assets once. The device state (identity key, enrollment, LoRA adapter) goes
 * under noBackupFilesDir: a private key restored onto another phone would let two devices speak
 * as one client.
 */
class LadaFiles(context: Context) {
    private val app = context.applicationContext
    val modelDir = File(app.filesDir, "lada/model")
    val dataDir = File(app.filesDir, "lada/data")
    val stateDir = File(app.noBackupFilesDir, "lada/state")
    val scoringModel = File(modelDir, "model.onnx")

    /**
     * The client name this device enrolls under: the one client in its data manifest, which the
     * app's own data pipeline writes (the SDK reads the shard by this name).
     */
    fun clientName(): String =
        JSONObject(File(dataDir, "manifest.json").readText())
            .getJSONArray("clients").getJSONObject(0).getString("name")

    /** Copies model.onnx and tokenizer.json from assets/lada/ unless this app version already did. */
    fun installModel() {
        val stamp = File(modelDir, ".installed-version")
        val version = app.packageManager.getPackageInfo(app.packageName, 0).longVersionCodeCompat()
        if (stamp.exists() && stamp.readText() == version.toString()) return
        modelDir.mkdirs()
        for (name in listOf("model.onnx", "tokenizer.json")) {
            val tmp = File(modelDir, "$name.tmp")
            app.assets.open("lada/$name").use { input -> tmp.outputStream().use { input.copyTo(it) } }
            check(tmp.renameTo(File(modelDir, name))) { "cannot install $name into $modelDir" }
        }
        stamp.writeText(version.toString())
    }

    @Suppress("DEPRECATION")
    private fun android.content.pm.PackageInfo.longVersionCodeCompat(): Long =
        if (Build.VERSION.SDK_INT >= 28) longVersionCode else versionCode.toLong()
}

/**
 * Kotlin face of `lada_client.Bridge`: every call is one JSON string in, one JSON string out.
 *
 * Calls block (scoring takes seconds, a round minutes): call them from a WorkManager worker or
 * `Dispatchers.IO`, never from the main thread. Only `status` answers while another call runs;
 * the others fail fast with code "busy".
 */
object LadaBridge {
    private const val TAG = "LadaBridge"

    @Volatile
    private var bridge: PyObject? = null

    private fun bridge(context: Context): PyObject =
        bridge ?: synchronized(this) {
            bridge ?: run {
                if (!Python.isStarted()) Python.start(AndroidPlatform(context.applicationContext))
                val py = Python.getInstance()
                // Route the SDK's logging to logcat (Chaquopy forwards stderr there).
                py.getModule("logging").callAttr(
                    "basicConfig",
                    Kwarg("level", "INFO"),
                    Kwarg("format", "%(name)s %(levelname)s %(message)s"),
                )
                py.getModule("lada_client").callAttr("Bridge").also { bridge = it }
            }
        }

    /** Sends {"method": [method], "params": [params]} and returns `result`, or throws [LadaBridgeException]. */
    fun call(context: Context, method: String, params: JSONObject = JSONObject()): Any {
        check(Looper.myLooper() != Looper.getMainLooper()) { "LadaBridge.$method called on the main thread" }
        val request = JSONObject().put("method", method).put("params", params)
        val reply = JSONObject(bridge(context).callAttr("call", request.toString()).toString())
        if (reply.getBoolean("ok")) return reply.get("result")
        val error = reply.getJSONObject("error")
        Log.w(TAG, "$method failed: ${error.getString("code")}: ${error.getString("message")}")
        throw LadaBridgeException(error.getString("code"), error.getString("message"))
    }

    /** Builds the client from the app's files. Offline; reconfiguring replaces the client. */
    fun configure(context: Context): JSONObject {
        val files = LadaFiles(context)
        files.installModel()
        files.stateDir.mkdirs()
        val params = JSONObject()
            .put("coordinator_url", BuildConfig.LADA_COORDINATOR_URL)
            .put("name", files.clientName())
            .put("state_dir", files.stateDir.absolutePath)
            .put("data_dir", files.dataDir.absolutePath)
            .put("scoring_model", files.scoringModel.absolutePath)
            // Small batches keep peak memory low; a short evaluation keeps a round short.
            .put("batch_size", 4)
            .put("eval_size", 16)
            .put("max_offers", 8)
            .put("request_timeout_s", 30.0)
            .put("poll_interval_s", 2.0)
            // A WorkManager worker is stopped after 10 minutes; give up waiting well before that.
            .put("max_wait_s", 480.0)
            // Two threads: the big cores of most phones, without heating the device.
            .put("runtime", JSONObject().put("intra_op_threads", 2))
        return call(context, "configure", params) as JSONObject
    }

    /** Configures unless this process already did (the Python interpreter outlives activities). */
    fun ensureConfigured(context: Context): JSONObject {
        val status = status(context)
        return if (status.getBoolean("configured")) status else configure(context)
    }

    fun enroll(context: Context, token: String): JSONObject =
        call(context, "enroll", JSONObject().put("token", token)) as JSONObject

    /** Learnability features of each candidate: one row per candidate, one column per feature name. */
    fun score(context: Context, candidates: List<ScoreCandidate>): JSONObject {
        val items = JSONArray()
        for (c in candidates) {
            items.put(
                JSONObject()
                    .put("question", c.question)
                    .put("path", c.path)
                    .put("llm_logprob", c.llmLogprob)
                    .put("llm_tokens", c.llmTokens)
            )
        }
        return call(context, "score", JSONObject().put("candidates", items)) as JSONObject
    }

    /** One round if the coordinator is collecting features; `result.ran` says whether it ran. */
    fun roundStep(context: Context): JSONObject = call(context, "round_step") as JSONObject

    /** Local LoRA update; fails with code "unsupported" in builds without torch (this sample's). */
    fun train(context: Context, epochs: Int = 1): JSONObject =
        call(context, "train", JSONObject().put("epochs", epochs)) as JSONObject

    fun status(context: Context): JSONObject = call(context, "status") as JSONObject

    fun shutdown(context: Context) {
        call(context, "shutdown")
    }
}
