package org.lada.sample

import android.graphics.Typeface
import android.os.Bundle
import android.text.InputType
import android.widget.Button
import android.widget.EditText
import android.widget.LinearLayout
import android.widget.ScrollView
import android.widget.TextView
import androidx.appcompat.app.AppCompatActivity
import androidx.lifecycle.lifecycleScope
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.launch
import kotlinx.coroutines.withContext
import org.json.JSONObject

/**
 * A bare screen over [LadaBridge]: enroll with a token, score a sample, show status, train.
 * Every bridge call runs on Dispatchers.IO; the main thread only shows the JSON that comes back.
 */
class MainActivity : AppCompatActivity() {
    private lateinit var output: TextView
    private lateinit var tokenInput: EditText

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        output = TextView(this).apply {
            typeface = Typeface.MONOSPACE
            setTextIsSelectable(true)
        }
        tokenInput = EditText(this).apply {
            hint = "one-time enrollment token"
            inputType = InputType.TYPE_CLASS_TEXT or InputType.TYPE_TEXT_VARIATION_PASSWORD
        }
        val layout = LinearLayout(this).apply {
            orientation = LinearLayout.VERTICAL
            setPadding(32, 32, 32, 32)
            addView(tokenInput)
            addView(button("Enroll") { LadaBridge.enroll(this@MainActivity, tokenInput.text.toString().trim()) })
            addView(button("Score sample") { LadaBridge.score(this@MainActivity, listOf(SAMPLE)) })
            addView(button("Status") { LadaBridge.status(this@MainActivity) })
            // This sample ships without torch, so the reply is the "unsupported" error.
            addView(button("Train locally") { LadaBridge.train(this@MainActivity) })
            addView(ScrollView(this@MainActivity).apply { addView(output) })
        }
        setContentView(layout)
        launchCall("configure") { LadaBridge.ensureConfigured(this) }
        RoundWorker.schedule(this)
    }

    private fun button(label: String, action: () -> Any): Button =
        Button(this).apply {
            text = label
            setOnClickListener { launchCall(label, action) }
        }

    /** Runs one bridge call off the main thread and shows its result or error code when it returns. */
    private fun launchCall(label: String, action: () -> Any) {
        lifecycleScope.launch {
            output.text = "$label…"
            val shown = withContext(Dispatchers.IO) {
                try {
                    when (val result = action()) {
                        is JSONObject -> result.toString(2)
                        else -> result.toString()
                    }
                } catch (e: LadaBridgeException) {
                    "error ${e.code}: ${e.message}"
                }
            }
            output.text = "$label\n$shown"
        }
    }

    private companion object {
        /** The same sample drive_bridge.py scores, so laptop and phone outputs can be compared. */
        val SAMPLE = ScoreCandidate(
            question = "Mia has 12 stickers and gives away 5. How many stickers does Mia have left?",
            path = "12 - 5 = 7. The answer is 7.",
            llmLogprob = -3.2,
            llmTokens = 14,
        )
    }
}
